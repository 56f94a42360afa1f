//! Whether a backing device answers inline: its SG_IO returns without the
//! calling thread ever sleeping. Such a device runs one command at a time
//! (large reads one per CPU); one that takes time to answer keeps its full
//! queue depth.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::scsi::cdb::{RwCdb, RwKind};
use crate::tcmu::ring::CmdRequest;

/// Every this many commands a thread checks whether its SG_IO slept.
pub const INLINE_SAMPLE: u32 = 4;

/// On an inline device, reads of this size or more run one per CPU (see
/// [`InlineMeter`]).
pub const LARGE_READ: u64 = 512 << 10;

/// A READ of `LARGE_READ` bytes or more.
pub fn large_read(cmd: &CmdRequest) -> bool {
    cmd.data_len() >= LARGE_READ
        && matches!(RwCdb::parse(&cmd.cdb), Ok(Some(rw)) if rw.kind == RwKind::Read)
}

/// Whether the backing device answers in the submitter's context: its
/// SG_IO returns without the thread ever sleeping (scsi_debug with
/// `delay=0`, some RAM-backed devices). Such a device's work is CPU work
/// on the daemon's thread, and commands run side by side compete with each
/// other and with the initiator's side of the target (LIO, the kernel's
/// copies into the data area) for the CPUs. Measured on 2 CPUs at QD4:
/// 1 MiB writes 370 IOPS at one in flight, 300 at two, 240 at four; 64 KiB
/// reads and writes lost 10-20% at two; but 1 MiB reads 230, 340, 300,
/// because the kernel's copy of a large read out of the data area (in the
/// completing thread's doorbell write) overlaps the next command. So an
/// inline device runs one command at a time, and reads of
/// [`LARGE_READ`] or more one per CPU. A device whose SG_IO sleeps keeps
/// its full queue depth.
#[derive(Debug, Default)]
pub struct InlineMeter {
    /// An average of recent samples, 0 (always slept) to 256 (never).
    score: AtomicU32,
    inline: AtomicBool,
    /// Verdict changes so far (for logging).
    flips: AtomicU32,
}

impl InlineMeter {
    const ENTER: u32 = 224;
    const LEAVE: u32 = 128;

    /// Records one sample; returns the new verdict when it changed.
    pub fn record(&self, slept: bool) -> Option<bool> {
        let x = if slept { 0 } else { 256 };
        let prev = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s * 7 + x) / 8)
            })
            .unwrap_or(0);
        let score = (prev * 7 + x) / 8;
        let was = self.inline.load(Ordering::Relaxed);
        let now = if was {
            score >= Self::LEAVE
        } else {
            score >= Self::ENTER
        };
        (now != was && self.inline.swap(now, Ordering::Relaxed) == was).then_some(now)
    }

    pub fn is_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// Forgets what was measured (a new backing device).
    pub fn reset(&self) {
        self.score.store(0, Ordering::Relaxed);
        self.inline.store(false, Ordering::Relaxed);
    }

    /// Records one sample and logs a change of verdict: the first at info,
    /// later flips at debug.
    pub fn sample(&self, slept: bool, label: &str, cpus: usize) {
        let Some(now) = self.record(slept) else {
            return;
        };
        // The first verdict at info; a device that flips between the two
        // later does so at debug.
        let level = if self.flips.fetch_add(1, Ordering::Relaxed) == 0 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        if now {
            log::log!(
                level,
                "{}: the backing device answers inline (SG_IO does not sleep): \
                 one command at a time, reads of {} KiB or more one per CPU ({})",
                label,
                LARGE_READ >> 10,
                cpus
            );
        } else {
            log::log!(
                level,
                "{}: the backing device takes time to answer: its full queue depth in flight",
                label
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_reads_count_as_large_reads() {
        let cmd = |cdb: &[u8], len: u64| CmdRequest {
            cdb: cdb.to_vec(),
            iovs: vec![
                crate::tcmu::ring::DataIov {
                    off: 0,
                    len: len / 2,
                },
                crate::tcmu::ring::DataIov {
                    off: len / 2,
                    len: len / 2,
                },
            ],
            ..CmdRequest::default()
        };
        let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0x08, 0, 0];
        let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0];
        let read16 = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0];
        assert!(large_read(&cmd(&read10, 1 << 20)));
        assert!(large_read(&cmd(&read16, 512 << 10)));
        assert!(!large_read(&cmd(&read10, 64 << 10)));
        assert!(!large_read(&cmd(&write10, 1 << 20)));
        assert!(!large_read(&cmd(&[0x12, 0, 0, 0, 0xff, 0], 1 << 20)));
    }

    #[test]
    fn the_inline_meter_needs_a_run_of_samples_and_has_hysteresis() {
        let m = InlineMeter::default();
        // A few inline answers do not make a device inline.
        for _ in 0..5 {
            assert_eq!(m.record(false), None);
        }
        let mut entered = None;
        for i in 0..40 {
            if m.record(false) == Some(true) {
                entered = Some(i);
                break;
            }
        }
        assert!(entered.is_some() && m.is_inline());
        // One sleep does not end it; a run of them does.
        assert_eq!(m.record(true), None);
        assert!(m.is_inline());
        let left = (0..20).find(|_| m.record(true) == Some(false));
        assert!(left.is_some() && !m.is_inline());
    }
}
