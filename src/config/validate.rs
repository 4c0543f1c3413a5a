//! Validation: every value is checked before a breaker exists, and a new configuration is
//! checked against the one it replaces in a running breaker.

use std::time::Duration;

use super::window::default_buckets;
use super::{
    Builder, Config, DEFAULT_FAILURE_RATE, MAX_BUCKETS, MAX_HALF_OPEN_CALLS, MAX_WINDOW_CALLS,
    OpenInterval, WindowKind,
};
use crate::error::ConfigError;

impl Config {
    /// Checks that `self` may replace `old` in a running breaker, and gives it `old`'s name if
    /// it has none. The name is the breaker's identity; the call timeout and whether slow calls
    /// are timed are part of every call's path, fixed when the breaker is built.
    pub(crate) fn check_replaces(&mut self, old: &Config) -> Result<(), ConfigError> {
        match &self.name {
            None => self.name = old.name.clone(),
            Some(name) if Some(name) != old.name.as_ref() => {
                let allowed = match &old.name {
                    Some(old) => format!("unset or {old:?}: a running breaker keeps its name"),
                    None => "unset: a running breaker keeps its name".to_string(),
                };
                return Err(ConfigError::new("name", name, allowed));
            }
            Some(_) => {}
        }
        if self.call_timeout != old.call_timeout {
            return Err(ConfigError::new(
                "call_timeout",
                self.call_timeout,
                format!(
                    "{:?}: the call timeout is fixed when the breaker is built",
                    old.call_timeout
                ),
            ));
        }
        if self.adaptive != old.adaptive {
            return Err(ConfigError::new(
                "adaptive_throttling",
                self.adaptive,
                format!(
                    "{:?}: adaptive throttling is fixed when the breaker is built",
                    old.adaptive
                ),
            ));
        }
        if self.slow_call_duration.is_some() != old.slow_call_duration.is_some() {
            let allowed = match old.slow_call_duration {
                Some(_) => "set: this breaker times its calls (slow calls are tracked)",
                None => "unset: this breaker was built without slow-call tracking",
            };
            return Err(ConfigError::new(
                "slow_call_duration",
                self.slow_call_duration,
                allowed,
            ));
        }
        Ok(())
    }

    pub(crate) fn open_interval(&self, attempt: u32, uniform: f64) -> Duration {
        match self.open {
            OpenInterval::Fixed(d) => d,
            OpenInterval::Backoff(b) => b.interval(attempt, uniform),
        }
    }
}

impl<C> Builder<C> {
    #[cfg(test)]
    pub(crate) fn validate_for_tests(&self) -> Config {
        self.validate().expect("valid test configuration")
    }

    /// An unnamed breaker of this configuration (tests of the state machine).
    #[cfg(test)]
    pub(crate) fn breaker_for_tests(&self) -> crate::state::Breaker {
        crate::state::Breaker::new(std::sync::Arc::new(self.validate_for_tests()), None)
    }

    pub(crate) fn validate(&self) -> Result<Config, ConfigError> {
        fn rate(field: &'static str, value: f64) -> Result<f64, ConfigError> {
            if value > 0.0 && value <= 1.0 {
                Ok(value)
            } else {
                Err(ConfigError::new(field, value, "(0, 1]"))
            }
        }
        fn positive(field: &'static str, value: Duration) -> Result<Duration, ConfigError> {
            if value.is_zero() {
                Err(ConfigError::new(field, value, "more than 0"))
            } else {
                Ok(value)
            }
        }

        let failure_rate_threshold = match self.failure_rate_threshold {
            Some(r) => Some(rate("failure_rate_threshold", r)?),
            // A learned threshold is this rule's; otherwise on by default only when no other
            // policy (a rule, or the throttle) is set.
            None if self.learned.is_some()
                || (self.slow_call_rate_threshold.is_none()
                    && self.consecutive_failures.is_none()
                    && self.adaptive.is_none()) =>
            {
                Some(DEFAULT_FAILURE_RATE)
            }
            None => None,
        };
        let slow_call_rate_threshold = self
            .slow_call_rate_threshold
            .map(|r| rate("slow_call_rate_threshold", r))
            .transpose()?;
        let slow_call_duration = self
            .slow_call_duration
            .map(|d| positive("slow_call_duration", d))
            .transpose()?;
        let slow_call_duration = match (slow_call_rate_threshold, slow_call_duration) {
            (_, Some(d)) => Some(d),
            (Some(_), None) => Some(Duration::from_secs(60)),
            (None, None) => None,
        };

        let window = match self.window.kind {
            WindowKind::Count(n) => {
                if n == 0 || n > MAX_WINDOW_CALLS {
                    return Err(ConfigError::new(
                        "sliding_window",
                        self.window,
                        format!("Window::count(1..={MAX_WINDOW_CALLS})"),
                    ));
                }
                WindowKind::Count(n)
            }
            WindowKind::Time { duration, buckets } => {
                let k = buckets.unwrap_or_else(|| default_buckets(duration));
                let allowed =
                    "Window::time(d).buckets(k) with k in 1..=4096 and d / k of at least 1 ms";
                if k == 0 || k > MAX_BUCKETS || duration / k < Duration::from_millis(1) {
                    return Err(ConfigError::new("sliding_window", self.window, allowed));
                }
                WindowKind::Time {
                    duration,
                    buckets: Some(k),
                }
            }
        };

        if self.minimum_calls == 0 || self.minimum_calls > MAX_WINDOW_CALLS {
            return Err(ConfigError::new(
                "minimum_calls",
                self.minimum_calls,
                format!("1..={MAX_WINDOW_CALLS}"),
            ));
        }
        let minimum_calls = match window {
            WindowKind::Count(n) => self.minimum_calls.min(n),
            WindowKind::Time { .. } => self.minimum_calls,
        };

        if let Some(0) = self.consecutive_failures {
            return Err(ConfigError::new("consecutive_failures", 0u32, "at least 1"));
        }

        // Checked even when a backoff replaces it: a bad value is a mistake either way.
        let open_duration = positive("open_duration", self.open_duration)?;
        let open = match self.open_backoff {
            None => OpenInterval::Fixed(open_duration),
            Some(b) => {
                positive("open_backoff", b.initial)
                    .map_err(|_| ConfigError::new("open_backoff", b, "initial more than 0"))?;
                if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
                    return Err(ConfigError::new(
                        "open_backoff",
                        b,
                        "multiplier finite and at least 1",
                    ));
                }
                if b.max < b.initial {
                    return Err(ConfigError::new("open_backoff", b, "max at least initial"));
                }
                if !(0.0..=1.0).contains(&b.jitter) {
                    return Err(ConfigError::new("open_backoff", b, "jitter in [0, 1]"));
                }
                OpenInterval::Backoff(b)
            }
        };

        if self.half_open_calls == 0 || self.half_open_calls > MAX_HALF_OPEN_CALLS {
            return Err(ConfigError::new(
                "half_open_calls",
                self.half_open_calls,
                format!("1..={MAX_HALF_OPEN_CALLS}"),
            ));
        }
        let half_open_successes = self.half_open_successes.unwrap_or(self.half_open_calls);
        if half_open_successes == 0 || half_open_successes > self.half_open_calls {
            return Err(ConfigError::new(
                "half_open_successes",
                half_open_successes,
                format!("1..={} (half_open_calls)", self.half_open_calls),
            ));
        }
        let half_open_max_wait = self
            .half_open_max_wait
            .map(|d| positive("half_open_max_wait", d))
            .transpose()?;
        let call_timeout = self
            .call_timeout
            .map(|d| positive("call_timeout", d))
            .transpose()?;
        let max_retry_after = positive("max_retry_after", self.max_retry_after)?;
        if let Some(throttle) = &self.adaptive {
            throttle.validate()?;
        }
        if let Some(learned) = &self.learned {
            learned.validate()?;
        }

        Ok(Config {
            name: self.name.clone(),
            failure_rate_threshold,
            slow_call_rate_threshold,
            slow_call_duration,
            window,
            minimum_calls: u64::from(minimum_calls),
            consecutive_failures: self.consecutive_failures,
            open,
            half_open_calls: self.half_open_calls,
            half_open_successes,
            half_open_max_wait,
            call_timeout,
            max_retry_after,
            on_event: self.on_event.clone(),
            adaptive: self.adaptive,
            learned: self.learned,
            #[cfg(feature = "metrics")]
            export: self.export.clone(),
        })
    }
}
