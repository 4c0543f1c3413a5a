//! The replay tool's trace parser (`examples/src/replay.rs`): good lines are read exactly, every
//! bad line is reported with its number and skipped, and no input makes it panic.

use std::time::Duration;

use examples::replay::{Outage, TraceCall, TraceOutcome, parse};
use proptest::prelude::*;

fn outcome_name(outcome: TraceOutcome) -> &'static str {
    match outcome {
        TraceOutcome::Ok => "ok",
        TraceOutcome::Error => "error",
        TraceOutcome::Ignored => "ignored",
    }
}

/// Calls with non-decreasing times, in whole milliseconds (so that writing them is exact).
fn calls() -> impl Strategy<Value = Vec<(u64, TraceOutcome, u64)>> {
    let outcome = prop_oneof![
        Just(TraceOutcome::Ok),
        Just(TraceOutcome::Error),
        Just(TraceOutcome::Ignored)
    ];
    prop::collection::vec((0u64..5_000, outcome, 0u64..100_000), 0..60).prop_map(|steps| {
        let mut at = 0;
        steps
            .into_iter()
            .map(|(step, outcome, latency)| {
                at += step;
                (at, outcome, latency)
            })
            .collect()
    })
}

fn write(at_ms: u64, outcome: TraceOutcome, latency_us: u64) -> String {
    format!(
        "{}.{:03},{},{}.{:03}",
        at_ms / 1000,
        at_ms % 1000,
        outcome_name(outcome),
        latency_us / 1000,
        latency_us % 1000
    )
}

fn expected(at_ms: u64, outcome: TraceOutcome, latency_us: u64) -> TraceCall {
    TraceCall {
        at: Duration::from_millis(at_ms),
        outcome,
        latency: Duration::from_micros(latency_us),
    }
}

/// Lines that are never a call: wrong field counts, bad numbers, unknown outcomes.
fn garbage() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.0,ok".to_string()),
        Just("1.0,ok,3,4".to_string()),
        Just("x,ok,3".to_string()),
        Just("-1,ok,3".to_string()),
        Just("1,maybe,3".to_string()),
        Just("1,ok,NaN".to_string()),
        Just("1,ok,inf".to_string()),
        Just("outage,5,1".to_string()),
        // Not `time`: on the first line, that is the header.
        "[a-z]{1,8}".prop_filter("not the header", |s| s != "time"),
    ]
}

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_nanos(1)
}

proptest! {
    #[test]
    fn every_written_call_is_read_back(calls in calls()) {
        let mut text = String::from("time,outcome,latency\n");
        for &(at, outcome, latency) in &calls {
            text += &write(at, outcome, latency);
            text.push('\n');
        }
        let trace = parse(&text);
        prop_assert!(trace.bad_lines.is_empty(), "{:?}", trace.bad_lines);
        prop_assert_eq!(trace.calls.len(), calls.len());
        for (read, &(at, outcome, latency)) in trace.calls.iter().zip(&calls) {
            let want = expected(at, outcome, latency);
            prop_assert!(close(read.at, want.at), "{:?} {:?}", read, want);
            prop_assert!(close(read.latency, want.latency), "{:?} {:?}", read, want);
            prop_assert_eq!(read.outcome, want.outcome);
        }
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number_and_the_others_are_kept(
        calls in calls(),
        bad in prop::collection::vec((any::<prop::sample::Index>(), garbage()), 0..10),
    ) {
        let mut lines: Vec<(String, bool)> =
            calls.iter().map(|&(a, o, l)| (write(a, o, l), true)).collect();
        for (index, text) in bad {
            let at = index.index(lines.len() + 1);
            lines.insert(at, (text, false));
        }
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let trace = parse(&text);
        let bad_numbers: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, (_, good))| !good)
            .map(|(i, _)| i + 1)
            .collect();
        let reported: Vec<usize> = trace.bad_lines.iter().map(|b| b.line).collect();
        prop_assert_eq!(reported, bad_numbers);
        prop_assert_eq!(trace.calls.len(), calls.len());
    }

    #[test]
    fn no_input_makes_the_parser_panic(text in "\\PC{0,200}(\n\\PC{0,40}){0,10}") {
        let trace = parse(&text);
        let lines = text.lines().count();
        prop_assert!(trace.bad_lines.iter().all(|b| (1..=lines).contains(&b.line)));
        prop_assert!(trace.calls.windows(2).all(|w| w[0].at <= w[1].at));
    }
}

#[test]
fn a_call_out_of_order_is_reported_and_skipped() {
    let trace = parse("1,ok,1\n0.5,ok,1\n2,error,1\n");
    assert_eq!(trace.calls.len(), 2);
    assert_eq!(trace.bad_lines.len(), 1);
    assert_eq!(trace.bad_lines[0].line, 2);
    assert!(trace.bad_lines[0].to_string().starts_with("line 2: time"));
}

#[test]
fn outage_lines_are_read_and_otherwise_derived_from_failing_buckets() {
    let trace = parse("outage,10,20\n# a comment\n\n0,ok,1\n");
    assert_eq!(
        trace.outages,
        [Outage {
            start: Duration::from_secs(10),
            end: Duration::from_secs(20)
        }]
    );
    // 0-10 s healthy, 10-30 s failing, 30-40 s healthy.
    let mut text = String::new();
    for s in 0..40 {
        let outcome = if (10..30).contains(&s) { "error" } else { "ok" };
        text += &format!("{s},{outcome},1\n");
    }
    let derived = parse(&text).outages_or_derived();
    assert_eq!(
        derived,
        [Outage {
            start: Duration::from_secs(10),
            end: Duration::from_secs(30)
        }]
    );
}
