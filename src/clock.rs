//! The worker's clock: every timer of the subscription manager and the sync step (the watchdog,
//! renewals, back-off) takes its durations from here, so tests and the demo can make Exchange's
//! minutes pass in milliseconds, on the same scale as the simulator. Instants stay real (they are
//! stored and compared with what the database and Exchange record); only spans are scaled.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    scale: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock {
    pub fn real() -> Self {
        Self { scale: 1.0 }
    }

    /// `scale` 0.001 makes a nominal minute last 60 ms. Values outside (0, 1] mean real time.
    pub fn scaled(scale: f64) -> Self {
        if scale > 0.0 && scale <= 1.0 {
            Self { scale }
        } else {
            Self::real()
        }
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// How long a nominal span really lasts.
    pub fn span(&self, nominal: Duration) -> Duration {
        nominal.mul_f64(self.scale)
    }

    /// [`Clock::span`] as a `time` duration, for arithmetic on stored instants.
    pub fn time_span(&self, nominal: Duration) -> time::Duration {
        time::Duration::try_from(self.span(nominal)).unwrap_or(time::Duration::MAX)
    }

    pub fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    pub async fn sleep(&self, nominal: Duration) {
        tokio::time::sleep(self.span(nominal)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_scale_and_bad_scales_mean_real_time() {
        let fast = Clock::scaled(0.001);
        assert_eq!(
            fast.span(Duration::from_secs(60)),
            Duration::from_millis(60)
        );
        assert_eq!(
            fast.time_span(Duration::from_secs(30)),
            time::Duration::milliseconds(30)
        );
        for bad in [0.0, -1.0, 2.0, f64::NAN] {
            assert_eq!(Clock::scaled(bad), Clock::real());
        }
    }
}
