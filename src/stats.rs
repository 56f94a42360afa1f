//! Per-device counters, kept without a lock on the command path (relaxed
//! atomics: each is a tally read now and then, never used to order
//! anything).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Commands completed into the ring.
    pub done: AtomicU64,
    /// Commands running now (read from the ring, not yet completed).
    pub in_flight: AtomicU64,
    /// The most commands that ran at once.
    pub peak_in_flight: AtomicU64,
}

impl DeviceStats {
    /// Counts a command as started; the guard counts it done when dropped.
    pub fn start(&self) -> Running<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(n, Ordering::Relaxed);
        Running(self)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A command being run (see [`DeviceStats::start`]).
pub struct Running<'a>(&'a DeviceStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.done.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_and_peak() {
        let s = DeviceStats::default();
        let a = s.start();
        let b = s.start();
        assert_eq!(DeviceStats::get(&s.in_flight), 2);
        drop(a);
        let c = s.start();
        drop(b);
        drop(c);
        assert_eq!(DeviceStats::get(&s.in_flight), 0);
        assert_eq!(DeviceStats::get(&s.peak_in_flight), 2);
        assert_eq!(DeviceStats::get(&s.done), 3);
    }
}
