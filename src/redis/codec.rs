//! Our values in Redis, written and read back: the fleet's state record and the names of our
//! keys.
//!
//! A state record is one line of text, `1 open <until_ms> <origin>` or `1 closed <since_ms>
//! <origin>`: the format's version, the state, a time in milliseconds of the Redis server's
//! clock, and the instance that wrote it. Text, so that an operator can read it with
//! `redis-cli GET`; versioned, so that a later format is refused rather than misread. Anything
//! else under our keys is refused by [`parse`] with the reason, never a panic.

use std::fmt;

/// The version of the key layout and of the record format (in every key and every record).
pub(crate) const VERSION: &str = "1";

/// The longest origin (instance id) accepted.
const MAX_ORIGIN: usize = 64;

/// The fleet's state, as stored under the state key and published on the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// Open until `until_ms` (server clock); the first probe episode starts then.
    Open { until_ms: u64, origin: String },
    /// Closed since `since_ms` (server clock): the window counts of this closed period are in
    /// the buckets of epoch `since_ms`.
    Closed { since_ms: u64, origin: String },
}

impl Record {
    #[cfg(test)]
    pub(crate) fn encode(&self) -> String {
        match self {
            Record::Open { until_ms, origin } => format!("{VERSION} open {until_ms} {origin}"),
            Record::Closed { since_ms, origin } => {
                format!("{VERSION} closed {since_ms} {origin}")
            }
        }
    }
}

/// Why a value under our keys was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(&'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Reads a state record. Strict: exactly four fields separated by single spaces, our version,
/// a known state, a decimal time without sign, an origin of 1 to 64 visible ASCII characters.
pub(crate) fn parse(value: &[u8]) -> Result<Record, Malformed> {
    let text = std::str::from_utf8(value).map_err(|_| Malformed("not UTF-8"))?;
    let mut fields = text.split(' ');
    let (Some(version), Some(state), Some(time), Some(origin), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Malformed("not four space-separated fields"));
    };
    if version != VERSION {
        return Err(Malformed("unknown version"));
    }
    if time.is_empty() || time.len() > 20 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("time is not a decimal number of milliseconds"));
    }
    if time.len() > 1 && time.starts_with('0') {
        return Err(Malformed("time has leading zeros")); // one spelling per record
    }
    let time: u64 = time.parse().map_err(|_| Malformed("time out of range"))?;
    if origin.is_empty()
        || origin.len() > MAX_ORIGIN
        || !origin.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Malformed("origin is not 1 to 64 visible ASCII characters"));
    }
    let origin = origin.to_owned();
    match state {
        "open" => Ok(Record::Open {
            until_ms: time,
            origin,
        }),
        "closed" => Ok(Record::Closed {
            since_ms: time,
            origin,
        }),
        _ => Err(Malformed("unknown state")),
    }
}

/// The keys and channel of one shared breaker.
///
/// All under `tcb:1:{<namespace>:<name>[:<key>]}:`, the braces making one Redis Cluster hash
/// slot of each breaker's keys (a script touches only one breaker's keys). The namespace and
/// the name are percent-encoded outside `[A-Za-z0-9._-]`, so that no name can reach into another
/// breaker's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    /// The keys of the breaker `name` (and `key`, for one key of a keyed breaker).
    pub(crate) fn new(namespace: &str, name: &str, key: Option<&str>) -> Self {
        let key = key
            .map(|key| format!(":{}", escape(key)))
            .unwrap_or_default();
        Keys {
            prefix: format!(
                "tcb:{VERSION}:{{{}:{}{key}}}:",
                escape(namespace),
                escape(name)
            ),
        }
    }

    pub(crate) fn state(&self) -> String {
        format!("{}state", self.prefix)
    }

    pub(crate) fn probe(&self) -> String {
        format!("{}probe", self.prefix)
    }

    /// The prefix of the window's buckets: `<prefix>w:<epoch>:<bucket>`.
    pub(crate) fn window(&self) -> String {
        format!("{}w:", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The pattern of the channels of every key of the keyed breaker `name` (escaped names hold
    /// no pattern character, and `:` only as `%3A`, so no other breaker's channel matches).
    #[cfg(feature = "keyed")]
    pub(crate) fn pattern(namespace: &str, name: &str) -> String {
        format!(
            "tcb:{VERSION}:{{{}:{}:*}}:events",
            escape(namespace),
            escape(name)
        )
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written() {
        for record in [
            Record::Open {
                until_ms: 1_700_000_000_123,
                origin: "a1b2".into(),
            },
            Record::Closed {
                since_ms: 0,
                origin: "x".into(),
            },
        ] {
            assert_eq!(parse(record.encode().as_bytes()), Ok(record));
        }
    }

    #[test]
    fn foreign_records_are_refused_with_a_reason() {
        for bad in [
            &b""[..],
            b"1 open 12",
            b"2 open 12 a",
            b"1 opened 12 a",
            b"1 open -12 a",
            b"1 open 012 a",
            b"1 open +12 a",
            b"1 open 99999999999999999999 a",
            b"1 open 12 a b",
            b"1  open 12 a",
            b"1 closed 12 \xff",
            b"\xff\xfe",
            b"{\"state\":\"open\"}",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn names_cannot_reach_into_another_breakers_keys() {
        let a = Keys::new("shop", "db:1}", None);
        let b = Keys::new("shop:db", "1}", None);
        let c = Keys::new("shop", "db", Some("1}"));
        let d = Keys::new("shop", "db:1", Some("}"));
        assert_ne!(a.state(), b.state());
        assert_ne!(a.state(), c.state());
        assert_ne!(c.state(), d.state());
        assert_eq!(c.state(), "tcb:1:{shop:db:1%7D}:state");
        assert_eq!(a.state(), "tcb:1:{shop:db%3A1%7D}:state");
    }

    #[cfg(feature = "keyed")]
    #[test]
    fn a_keyed_pattern_matches_its_keys_channels_only() {
        let pattern = Keys::pattern("shop", "db");
        assert_eq!(pattern, "tcb:1:{shop:db:*}:events");
        let key = Keys::new("shop", "db", Some("a:b*")).channel();
        assert!(key.starts_with("tcb:1:{shop:db:") && key.ends_with("}:events"));
        assert!(
            !Keys::new("shop", "db:x", None)
                .channel()
                .starts_with("tcb:1:{shop:db:")
        );
        assert!(
            !Keys::new("shop", "db", None)
                .channel()
                .starts_with("tcb:1:{shop:db:")
        );
    }
}

#[cfg(all(test, not(loom)))]
mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn parse_refuses_or_reads_any_bytes_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(record) = parse(&bytes) {
                prop_assert_eq!(record.encode().into_bytes(), bytes);
            }
        }

        #[test]
        fn whatever_parses_is_exactly_what_encoding_it_writes(text in "[0-9]{1,2} (open|closed|shut) [0-9+-]{0,21} [ -~\\x7f]{0,70}") {
            if let Ok(record) = parse(text.as_bytes()) {
                prop_assert_eq!(record.encode(), text);
            }
        }

        #[test]
        fn every_record_reads_back_as_written(time in any::<u64>(), origin in "[!-~]{1,64}", open in any::<bool>()) {
            let record = match open {
                true => Record::Open { until_ms: time, origin },
                false => Record::Closed { since_ms: time, origin },
            };
            prop_assert_eq!(parse(record.encode().as_bytes()), Ok(record));
        }
    }
}
