//! The watcher's pause between failed attempts: 0.8 s doubling to 30 s, with jitter, reset by
//! progress only.
//!
//! kube's own `StreamBackoff` resets on any event, and the watcher emits one (`Init`) before
//! every list attempt, so against a dead API server it would retry every 0.8 s for ever.
use std::time::Duration;

const FIRST: Duration = Duration::from_millis(800);
const MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    rng: fastrand::Rng,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST,
            rng: fastrand::Rng::new(),
        }
    }
}

impl Backoff {
    /// The pause before the next attempt: the current step, give or take a quarter (so that
    /// the agents of a cluster do not all come back to a recovering API server at once).
    pub fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX);
        step.mul_f64(0.75 + self.rng.f64() / 2.0)
    }

    /// The watch made progress: the next failure waits the first step again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.pause()).collect();
        assert!(pauses[0] >= FIRST.mul_f64(0.75) && pauses[0] <= FIRST.mul_f64(1.25));
        assert!(pauses[3] >= Duration::from_millis(4800));
        assert!(pauses.iter().all(|p| *p <= MAX.mul_f64(1.25)));
        assert!(pauses[9] >= MAX.mul_f64(0.75));
        b.reset();
        assert!(b.pause() <= FIRST.mul_f64(1.25));
    }
}
