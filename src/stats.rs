//! Per-device counters, kept without a lock on the command path (relaxed
//! atomics: each is a tally read now and then, never used to order
//! anything), and the plain snapshot `tcmu-sg status` reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scsi::sense::status;

/// Latency histogram buckets: bucket `i` counts latencies in
/// [2^i, 2^(i+1)) microseconds (bucket 0 also those under 1 us).
pub const LAT_BUCKETS: usize = 32;

#[derive(Debug, Default)]
pub struct DeviceStats {
    /// Commands completed into the ring.
    pub done: AtomicU64,
    /// Commands running now (read from the ring, not yet completed).
    pub in_flight: AtomicU64,
    /// The most commands that ran at once.
    pub peak_in_flight: AtomicU64,
    /// Commands split into chunks, and the chunks they became.
    pub split: AtomicU64,
    pub chunks: AtomicU64,
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub good: AtomicU64,
    /// CHECK CONDITION by sense key.
    pub check_by_key: [AtomicU64; 16],
    pub reservation_conflict: AtomicU64,
    pub busy: AtomicU64,
    pub task_set_full: AtomicU64,
    /// Any other non-GOOD status.
    pub other_status: AtomicU64,
    /// SG_IO calls that failed in the ioctl or the transport (errno, host
    /// or driver status), whatever the initiator was told.
    pub transport_errors: AtomicU64,
    /// Task management notifications read from the ring.
    pub tmr: AtomicU64,
    /// Times the ring was reset on attach.
    pub ring_resets: AtomicU64,
    /// Times the backing device was lost, and opened again.
    pub lost: AtomicU64,
    pub reopened: AtomicU64,
    /// Commands refused BUSY, unrun, because LIO may have failed them back
    /// (a stall; see `crate::expiry`).
    pub stale_refused: AtomicU64,
    /// Commands the command policy refused, and those read-only refused
    /// (`scsi::policy`); none reached the backing device.
    pub policy_refused: AtomicU64,
    pub readonly_refused: AtomicU64,
    /// From ring read to completion: a histogram and the sum.
    pub latency_us: [AtomicU64; LAT_BUCKETS],
    pub latency_sum_us: AtomicU64,
}

/// What one completed command adds to the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Record {
    pub status: u8,
    /// With CHECK CONDITION.
    pub sense_key: u8,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// SG_IO calls made (more than one: a split command).
    pub chunks: u32,
    pub transport_error: bool,
    pub latency: Duration,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl DeviceStats {
    /// Counts a command as started; the guard counts it done when dropped.
    pub fn start(&self) -> Running<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(n, Ordering::Relaxed);
        Running(self)
    }

    pub fn get(c: &AtomicU64) -> u64 {
        get(c)
    }

    pub fn count(c: &AtomicU64) {
        add(c, 1);
    }

    pub fn record(&self, r: &Record) {
        match r.status {
            status::GOOD => add(&self.good, 1),
            status::CHECK_CONDITION => add(&self.check_by_key[(r.sense_key & 0xf) as usize], 1),
            status::RESERVATION_CONFLICT => add(&self.reservation_conflict, 1),
            status::BUSY => add(&self.busy, 1),
            status::TASK_SET_FULL => add(&self.task_set_full, 1),
            _ => add(&self.other_status, 1),
        }
        if r.read_bytes > 0 {
            add(&self.read_bytes, r.read_bytes);
        }
        if r.written_bytes > 0 {
            add(&self.written_bytes, r.written_bytes);
        }
        if r.chunks > 1 {
            add(&self.split, 1);
            add(&self.chunks, r.chunks as u64);
        }
        if r.transport_error {
            add(&self.transport_errors, 1);
        }
        add(&self.latency_us[bucket(r.latency)], 1);
        add(&self.latency_sum_us, r.latency.as_micros() as u64);
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            done: get(&self.done),
            in_flight: get(&self.in_flight),
            peak_in_flight: get(&self.peak_in_flight),
            split: get(&self.split),
            chunks: get(&self.chunks),
            read_bytes: get(&self.read_bytes),
            written_bytes: get(&self.written_bytes),
            good: get(&self.good),
            check_by_key: self.check_by_key.iter().map(get).collect(),
            reservation_conflict: get(&self.reservation_conflict),
            busy: get(&self.busy),
            task_set_full: get(&self.task_set_full),
            other_status: get(&self.other_status),
            transport_errors: get(&self.transport_errors),
            tmr: get(&self.tmr),
            ring_resets: get(&self.ring_resets),
            lost: get(&self.lost),
            reopened: get(&self.reopened),
            stale_refused: get(&self.stale_refused),
            policy_refused: get(&self.policy_refused),
            readonly_refused: get(&self.readonly_refused),
            latency_us: self.latency_us.iter().map(get).collect(),
            latency_sum_us: get(&self.latency_sum_us),
        }
    }
}

/// The histogram bucket of a latency.
pub fn bucket(d: Duration) -> usize {
    let us = d.as_micros().min(u64::MAX as u128) as u64;
    (63 - us.max(1).leading_zeros() as usize).min(LAT_BUCKETS - 1)
}

/// A plain copy of a device's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub done: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
    pub split: u64,
    pub chunks: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub good: u64,
    pub check_by_key: Vec<u64>,
    pub reservation_conflict: u64,
    pub busy: u64,
    pub task_set_full: u64,
    pub other_status: u64,
    pub transport_errors: u64,
    pub tmr: u64,
    pub ring_resets: u64,
    pub lost: u64,
    pub reopened: u64,
    pub stale_refused: u64,
    #[serde(default)]
    pub policy_refused: u64,
    #[serde(default)]
    pub readonly_refused: u64,
    pub latency_us: Vec<u64>,
    pub latency_sum_us: u64,
}

impl Counters {
    /// Commands that did not end GOOD.
    pub fn errors(&self) -> u64 {
        self.check_by_key.iter().sum::<u64>()
            + self.reservation_conflict
            + self.busy
            + self.task_set_full
            + self.other_status
    }

    /// `self - earlier`, counter by counter (for rates over an interval;
    /// gauges keep their current value).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let dv = |a: &[u64], b: &[u64]| {
            a.iter()
                .enumerate()
                .map(|(i, x)| d(*x, b.get(i).copied().unwrap_or(0)))
                .collect()
        };
        Counters {
            done: d(self.done, earlier.done),
            in_flight: self.in_flight,
            peak_in_flight: self.peak_in_flight,
            split: d(self.split, earlier.split),
            chunks: d(self.chunks, earlier.chunks),
            read_bytes: d(self.read_bytes, earlier.read_bytes),
            written_bytes: d(self.written_bytes, earlier.written_bytes),
            good: d(self.good, earlier.good),
            check_by_key: dv(&self.check_by_key, &earlier.check_by_key),
            reservation_conflict: d(self.reservation_conflict, earlier.reservation_conflict),
            busy: d(self.busy, earlier.busy),
            task_set_full: d(self.task_set_full, earlier.task_set_full),
            other_status: d(self.other_status, earlier.other_status),
            transport_errors: d(self.transport_errors, earlier.transport_errors),
            tmr: d(self.tmr, earlier.tmr),
            ring_resets: d(self.ring_resets, earlier.ring_resets),
            lost: d(self.lost, earlier.lost),
            reopened: d(self.reopened, earlier.reopened),
            stale_refused: d(self.stale_refused, earlier.stale_refused),
            policy_refused: d(self.policy_refused, earlier.policy_refused),
            readonly_refused: d(self.readonly_refused, earlier.readonly_refused),
            latency_us: dv(&self.latency_us, &earlier.latency_us),
            latency_sum_us: d(self.latency_sum_us, earlier.latency_sum_us),
        }
    }

    /// The latency at percentile `p` (0..=100) of the histogram, as its
    /// bucket's upper bound in microseconds; None when empty.
    pub fn latency_percentile_us(&self, p: f64) -> Option<u64> {
        let total: u64 = self.latency_us.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency_us.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(1u64 << (i + 1));
            }
        }
        None
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

    #[test]
    fn records_are_sorted_into_their_counters() {
        let s = DeviceStats::default();
        let us = Duration::from_micros;
        s.record(&Record {
            read_bytes: 4096,
            latency: us(150),
            ..Record::default()
        });
        s.record(&Record {
            status: status::CHECK_CONDITION,
            sense_key: 3,
            written_bytes: 1 << 20,
            chunks: 16,
            latency: us(3000),
            ..Record::default()
        });
        s.record(&Record {
            status: status::RESERVATION_CONFLICT,
            transport_error: false,
            latency: us(0),
            ..Record::default()
        });
        s.record(&Record {
            status: status::BUSY,
            transport_error: true,
            latency: us(1),
            ..Record::default()
        });
        let c = s.snapshot();
        assert_eq!(
            (c.good, c.check_by_key[3], c.reservation_conflict, c.busy),
            (1, 1, 1, 1)
        );
        assert_eq!((c.read_bytes, c.written_bytes), (4096, 1 << 20));
        assert_eq!((c.split, c.chunks, c.transport_errors), (1, 16, 1));
        assert_eq!(c.errors(), 3);
        // 150 us -> bucket 7 [128, 256); 3000 us -> bucket 11 [2048, 4096).
        assert_eq!(
            (c.latency_us[7], c.latency_us[11], c.latency_us[0]),
            (1, 1, 2)
        );
        assert_eq!(c.latency_percentile_us(50.0), Some(2));
        assert_eq!(c.latency_percentile_us(99.0), Some(4096));
        let later = s.snapshot();
        assert_eq!(later.since(&c).done, 0);
        assert_eq!(Counters::default().latency_percentile_us(50.0), None);
    }
}
