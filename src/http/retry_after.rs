//! `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP date, read defensively.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// Longer than any interval the breaker keeps (its maximum is capped by the builder), short
/// enough that adding it to any clock reading cannot overflow.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How long the upstream asked us to wait, from `now` (the wall clock, for HTTP dates).
///
/// `None` for no header, several headers, garbage, a negative number, or a date not in the
/// future: a hint that cannot be read is no hint. A number too large to hold is capped.
pub(crate) fn parse(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None; // ambiguous
    }
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: delta-seconds. Too many of them is "a very long time", not garbage.
        let secs = text.parse::<u64>().unwrap_or(u64::MAX);
        return (secs > 0).then(|| Duration::from_secs(secs).min(LONGEST));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    let wait = date.duration_since(now).ok()?;
    (!wait.is_zero()).then(|| wait.min(LONGEST))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(RETRY_AFTER, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn delta_seconds_are_read() {
        assert_eq!(
            parse(&headers(&[b"120"]), at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse(&headers(&[b" 7 "]), at(0)),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn an_http_date_is_read_from_now() {
        // Sun, 06 Nov 1994 08:49:37 GMT is 784111777 s after the epoch.
        let date: &[u8] = b"Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            parse(&headers(&[date]), at(784_111_777 - 30)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse(&headers(&[date]), at(784_111_777)),
            None,
            "not in the future"
        );
        assert_eq!(
            parse(&headers(&[date]), at(784_111_777 + 5)),
            None,
            "in the past"
        );
    }

    #[test]
    fn garbage_negative_zero_and_repeated_values_are_no_hint() {
        for value in [
            &b"soon"[..],
            b"-5",
            b"1.5",
            b"",
            b"0",
            b"12abc",
            b"+3",
            b"0x10",
        ] {
            assert_eq!(parse(&headers(&[value]), at(0)), None, "{value:?}");
        }
        assert_eq!(parse(&headers(&[b"1", b"2"]), at(0)), None);
        assert_eq!(parse(&HeaderMap::new(), at(0)), None);
    }

    #[test]
    fn huge_values_are_capped() {
        let huge = parse(&headers(&[b"99999999999999999999999999"]), at(0));
        assert_eq!(huge, Some(LONGEST));
        assert_eq!(
            parse(&headers(&[b"18446744073709551615"]), at(0)),
            Some(LONGEST)
        );
        let far: &[u8] = b"Fri, 31 Dec 9999 23:59:59 GMT";
        assert_eq!(parse(&headers(&[far]), at(0)), Some(LONGEST));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_stay_within_the_cap(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<u64>(),
        ) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut map = HeaderMap::new();
                map.insert(RETRY_AFTER, value);
                let now = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(now >> 8));
                if let Some(wait) = parse(&map, now.unwrap_or(SystemTime::UNIX_EPOCH)) {
                    prop_assert!(!wait.is_zero() && wait <= LONGEST);
                }
            }
        }

        #[test]
        fn any_number_of_seconds_is_read_or_capped(secs in 1..u64::MAX) {
            let map = headers(&[secs.to_string().as_bytes()]);
            prop_assert_eq!(parse(&map, at(0)), Some(Duration::from_secs(secs).min(LONGEST)));
        }
    }
}
