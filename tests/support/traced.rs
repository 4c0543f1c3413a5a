//! A tracing subscriber for tests: [`OnEvent`] hands every event to a closure, and [`fields`]
//! reads an event's fields as strings.

use std::collections::BTreeMap;
use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span;

/// A subscriber that gives every event to its closure and ignores spans: for a test that reads
/// what the breaker logs, or that runs code of its own at a known place inside a call (as a
/// user's subscriber may).
///
/// tracing caches each callsite's interest process-wide: a test that sets one of these with
/// `set_default` or `with_default` calls `tracing::callsite::rebuild_interest_cache()` after, or a
/// callsite first reached on another test's thread may stay silent.
pub struct OnEvent<F>(pub F);

impl<F> tracing::Subscriber for OnEvent<F>
where
    F: Fn(&tracing::Event<'_>) + Send + Sync + 'static,
{
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        (self.0)(event)
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// `event`'s fields by name: a string as it is, anything else as `Debug` shows it (the message
/// is its text).
pub fn fields(event: &tracing::Event<'_>) -> BTreeMap<String, String> {
    struct Fields(BTreeMap<String, String>);
    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
    }
    let mut fields = Fields(BTreeMap::new());
    event.record(&mut fields);
    fields.0
}
