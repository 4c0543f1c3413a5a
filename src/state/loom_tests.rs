//! loom models of the state machine's atomics. Run with `scripts/loom`.

use super::*;
use crate::config::Builder;
use loom::sync::Arc;
use loom::thread;

fn breaker(builder: Builder) -> Arc<Breaker> {
    let layer_config = builder.validate_for_tests();
    Arc::new(Breaker::new(StdArc::new(layer_config)))
}

/// Two callers race for the last probe permit: exactly one gets it.
#[test]
fn two_callers_race_the_last_probe_permit() {
    loom::model(|| {
        let b = breaker(
            Builder::default()
                .half_open_calls(1)
                .half_open_max_wait(Duration::from_secs(60)),
        );
        b.force(State::Closed);
        // Open, then half-open, on a fixed clock.
        b.transition_if(b.load().generation(), &mut Now::fixed(0), |_| {
            Some(State::Open)
        });
        let open_for = b.open_until.load(Ordering::Relaxed);
        assert_eq!(b.state(&mut Now::fixed(open_for)), State::HalfOpen);

        let b2 = b.clone();
        let t = thread::spawn(move || b2.admit(&mut Now::fixed(open_for)));
        let mine = b.admit(&mut Now::fixed(open_for));
        let theirs = t.join().unwrap();
        let admitted = [mine, theirs]
            .iter()
            .filter(|d| matches!(d, Decision::Admit(_)))
            .count();
        assert_eq!(admitted, 1);
    });
}
