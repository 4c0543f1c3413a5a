//! The trace format of `examples/replay.rs`, and its parser.
//!
//! A trace is a CSV file of calls, one a line, in the order they were made:
//!
//! ```text
//! # Lines starting with `#` and blank lines are skipped; so is a header line `time,outcome,latency`.
//! time,outcome,latency
//! 0.000,ok,12.5
//! 0.010,error,250
//! 0.020,ignored,3
//! outage,120,300
//! ```
//!
//! * `time`: when the call was made, in seconds from the start of the trace (a decimal number, at
//!   least 0, never less than the time of the line before).
//! * `outcome`: `ok` (or `success`), `error` (or `failure`, `fail`), `ignored` (the caller's
//!   fault, as a breaker's classifier would say: neither a success nor a failure).
//! * `latency`: how long the call took, in milliseconds (a decimal number, at least 0).
//!
//! A line `outage,START,END` (seconds) marks a real outage of the dependency, known from its
//! incident log: the replay counts the calls a configuration spared, or let through, during the
//! outages, and calls an opening outside every outage a false trip. A trace without outage lines
//! gets them from its own calls: every 10 s bucket in which at least half the calls failed.
//!
//! A bad line is reported with its line number (from 1) and skipped; the rest of the trace is
//! still read.

use std::fmt;
use std::time::Duration;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceOutcome {
    Ok,
    Error,
    Ignored,
}

/// One call of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceCall {
    /// When the call was made, from the start of the trace.
    pub at: Duration,
    pub outcome: TraceOutcome,
    pub latency: Duration,
}

/// A real outage, from `start` to `end` (inclusive), from the start of the trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outage {
    pub start: Duration,
    pub end: Duration,
}

impl Outage {
    pub fn contains(&self, at: Duration) -> bool {
        self.start <= at && at <= self.end
    }
}

/// A line that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// From 1.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// A parsed trace: its calls, its outages (as written; see [`Trace::outages_or_derived`]) and the
/// lines that were skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    pub calls: Vec<TraceCall>,
    pub outages: Vec<Outage>,
    pub bad_lines: Vec<BadLine>,
}

/// A number of seconds or milliseconds: decimal, finite, at least 0.
fn non_negative(field: &str, text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{field} {:?} is not a number", text.trim()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{field} {value} is not a finite number at least 0"));
    }
    // Durations of more than a thousand years are a typo, not a trace.
    if value > 3.0e10 {
        return Err(format!("{field} {value} is too large"));
    }
    Ok(value)
}

fn outcome(text: &str) -> Result<TraceOutcome, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "ok" | "success" => Ok(TraceOutcome::Ok),
        "error" | "failure" | "fail" => Ok(TraceOutcome::Error),
        "ignored" => Ok(TraceOutcome::Ignored),
        other => Err(format!(
            "outcome {other:?} is not one of ok, success, error, failure, fail, ignored"
        )),
    }
}

/// What one line holds.
enum Line {
    Skip,
    Call(TraceCall),
    Outage(Outage),
}

fn line(text: &str, first: bool) -> Result<Line, String> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(Line::Skip);
    }
    let fields: Vec<&str> = text.split(',').collect();
    if first
        && fields
            .first()
            .is_some_and(|f| f.trim().eq_ignore_ascii_case("time"))
    {
        return Ok(Line::Skip); // the header
    }
    if fields.len() != 3 {
        return Err(format!("{} fields, expected 3", fields.len()));
    }
    if fields[0].trim().eq_ignore_ascii_case("outage") {
        let start = non_negative("outage start", fields[1])?;
        let end = non_negative("outage end", fields[2])?;
        if end < start {
            return Err(format!("outage ends ({end}) before it starts ({start})"));
        }
        return Ok(Line::Outage(Outage {
            start: Duration::from_secs_f64(start),
            end: Duration::from_secs_f64(end),
        }));
    }
    let at = non_negative("time", fields[0])?;
    let outcome = outcome(fields[1])?;
    let latency = non_negative("latency", fields[2])?;
    Ok(Line::Call(TraceCall {
        at: Duration::from_secs_f64(at),
        outcome,
        latency: Duration::from_secs_f64(latency / 1000.0),
    }))
}

/// Reads a trace; bad lines are kept in [`Trace::bad_lines`] and skipped.
pub fn parse(text: &str) -> Trace {
    let mut trace = Trace::default();
    let mut first = true;
    for (index, text) in text.lines().enumerate() {
        let number = index + 1;
        match line(text, first) {
            Ok(Line::Skip) => continue,
            Ok(Line::Call(call)) => match trace.calls.last() {
                Some(last) if call.at < last.at => trace.bad_lines.push(BadLine {
                    line: number,
                    reason: format!(
                        "time {:?} is before the previous call's ({:?})",
                        call.at, last.at
                    ),
                }),
                _ => trace.calls.push(call),
            },
            Ok(Line::Outage(outage)) => trace.outages.push(outage),
            Err(reason) => trace.bad_lines.push(BadLine {
                line: number,
                reason,
            }),
        }
        first = false;
    }
    trace
}

/// The bucket of [`Trace::outages_or_derived`].
pub const OUTAGE_BUCKET: Duration = Duration::from_secs(10);

impl Trace {
    /// The outages written in the trace, or, if none is, the 10 s buckets (merged when
    /// adjacent) in which at least half of the recorded calls failed.
    pub fn outages_or_derived(&self) -> Vec<Outage> {
        if !self.outages.is_empty() {
            return self.outages.clone();
        }
        let mut outages: Vec<Outage> = Vec::new();
        let mut bucket = 0u64;
        let (mut calls, mut failed) = (0u32, 0u32);
        let close = |bucket: u64, calls: u32, failed: u32, outages: &mut Vec<Outage>| {
            if calls == 0 || failed * 2 < calls {
                return;
            }
            let start = OUTAGE_BUCKET * bucket as u32;
            let end = start + OUTAGE_BUCKET;
            match outages.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => outages.push(Outage { start, end }),
            }
        };
        for call in &self.calls {
            let b = (call.at.as_nanos() / OUTAGE_BUCKET.as_nanos()) as u64;
            if b != bucket {
                close(bucket, calls, failed, &mut outages);
                (bucket, calls, failed) = (b, 0, 0);
            }
            match call.outcome {
                TraceOutcome::Ok => calls += 1,
                TraceOutcome::Error => (calls, failed) = (calls + 1, failed + 1),
                TraceOutcome::Ignored => {}
            }
        }
        close(bucket, calls, failed, &mut outages);
        outages
    }
}
