//! LIO's command timer, and the rule that keeps a command it has failed
//! back from ever running.
//!
//! When a command has sat in a TCMU ring for `cmd_time_out` (the device's
//! configfs attribute, default 30 s, 0 = never), the kernel completes it to
//! the initiator as failed but leaves its entry in the ring for userspace,
//! which cannot tell from the entry. A handler that runs it afterwards
//! writes old data over whatever the initiator wrote since, through
//! another path or a retry. So a command may start only while its deadline
//! is far enough away that the SG_IO cannot outlive it:
//!
//! ```text
//!   start + SG_IO bound + margin <= seen_after + cmd_time_out
//! ```
//!
//! - `seen_after`: when the ring read *before* the one that found the
//!   command looked at `cmd_head`. The entry was not published then, and
//!   the kernel stamps a command's deadline (`jiffies + cmd_time_out`,
//!   rounded up) just before it publishes it, so its deadline is no earlier
//!   than `seen_after + cmd_time_out`, whatever happened in between: a
//!   stopped or starved daemon, a wait for a free thread.
//! - The SG_IO bound: the timeout asked for, raised to the kernel's floor
//!   (7 s for SG_IO on a block node, `BLK_MIN_SG_TIMEOUT`), plus the
//!   longest the command can wait in the node's queue before its timeout
//!   starts (an iSCSI or FC transport recovering a lost session holds the
//!   queue for up to its recovery timeout: `sg::backing::transport_queueing`).
//! - The margin: what an SG_IO can take past its timeout (the block
//!   layer's timer is rounded up to a second; the SCSI midlayer then aborts
//!   the command at the backing device) and the steps between the kernel's
//!   stamp and its publication: a sixth of `cmd_time_out`, at least 2 s,
//!   at most 30 s.
//!
//! A command that may not start is completed BUSY without touching the
//! backing device: if LIO still holds it, the initiator retries it.

use std::time::Duration;

/// A point in time for this rule: CLOCK_MONOTONIC_COARSE in nanoseconds
/// (cheap to read on every SG_IO; it lags the precise clock by up to one
/// kernel tick, which `CLOCK_SLACK` covers). A test's clock makes its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Stamp {
        Stamp(crate::sys::monotonic_coarse_ns())
    }

    pub const fn from_nanos(ns: u64) -> Stamp {
        Stamp(ns)
    }

    pub fn nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Stamp {
    type Output = Stamp;
    fn add(self, d: Duration) -> Stamp {
        Stamp(
            self.0
                .saturating_add(d.as_nanos().min(u64::MAX as u128) as u64),
        )
    }
}

impl std::ops::AddAssign<Duration> for Stamp {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

/// What a coarse clock read can lag behind the precise clock: a kernel
/// tick (4 ms at HZ=250, 10 ms at HZ=100), with room to spare. Counted
/// into every wait the rule measures.
pub const CLOCK_SLACK: Duration = Duration::from_millis(20);

/// The kernel's floor for an SG_IO timeout on a block node
/// (`BLK_MIN_SG_TIMEOUT`, 7 s); SG_IO on an sg node has none.
pub const BLOCK_SG_FLOOR: Duration = Duration::from_secs(7);

const MIN_MARGIN: Duration = Duration::from_secs(2);
const MAX_MARGIN: Duration = Duration::from_secs(30);
/// An idle device's ring is looked at least this often.
pub const MAX_SCAN_EVERY: Duration = Duration::from_secs(1);

/// The timing of one device's commands: LIO's `cmd_time_out` and the
/// SG_IO timeout, and what follows from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// LIO's `cmd_time_out`; zero: commands never expire.
    pub cmd_time_out: Duration,
    /// The SG_IO timeout asked for: the one wanted, lowered to what
    /// `cmd_time_out` allows.
    pub sg_timeout: Duration,
    /// The longest an SG_IO takes to time out: `sg_timeout` raised to the
    /// kernel's floor, plus `queueing`.
    pub sg_bound: Duration,
    /// How long an SG_IO may wait in a queue before its timeout starts.
    pub queueing: Duration,
    pub margin: Duration,
    /// The SG_IO timeout was lowered from the one wanted.
    pub lowered: bool,
}

impl Timing {
    /// The timing for `cmd_time_out`, an SG_IO timeout `wanted` and the
    /// kernel's `floor` for the node SG_IO is issued on.
    pub fn new(cmd_time_out: Duration, wanted: Duration, floor: Duration) -> Timing {
        Timing::queued(cmd_time_out, wanted, floor, Duration::ZERO)
    }

    /// [`Timing::new`] for a node whose SG_IOs may wait up to `queueing`
    /// in its queue before their timeout starts.
    pub fn queued(
        cmd_time_out: Duration,
        wanted: Duration,
        floor: Duration,
        queueing: Duration,
    ) -> Timing {
        if cmd_time_out.is_zero() {
            return Timing {
                cmd_time_out,
                sg_timeout: wanted,
                sg_bound: wanted.max(floor) + queueing,
                queueing,
                margin: Duration::ZERO,
                lowered: false,
            };
        }
        let margin = (cmd_time_out / 6).clamp(MIN_MARGIN, MAX_MARGIN);
        // At most cmd_time_out - 2 margins - the queueing: at least a
        // margin is left for the command's wait before it starts.
        let ceiling = cmd_time_out
            .saturating_sub(margin * 2)
            .saturating_sub(queueing)
            .max(Duration::from_secs(1));
        let sg_timeout = wanted.min(ceiling);
        Timing {
            cmd_time_out,
            sg_timeout,
            sg_bound: sg_timeout.max(floor) + queueing,
            queueing,
            margin,
            lowered: sg_timeout < wanted,
        }
    }

    /// The shortest `cmd_time_out` (whole seconds) that keeps an SG_IO
    /// timeout of `wanted` unlowered, with at least a margin of window,
    /// on a node with this floor and queueing.
    pub fn cmd_time_out_for(wanted: Duration, floor: Duration, queueing: Duration) -> Duration {
        (1..)
            .map(Duration::from_secs)
            .find(|&t| {
                let tm = Timing::queued(t, wanted, floor, queueing);
                !tm.lowered && tm.window().is_some_and(|w| w >= tm.margin)
            })
            .expect("a long enough cmd_time_out exists")
    }

    /// Whether commands expire at all.
    pub fn expires(&self) -> bool {
        !self.cmd_time_out.is_zero()
    }

    /// How long a command may wait, from the ring read before the one that
    /// found it, and still start (None: forever; zero: no command may
    /// start, `cmd_time_out` is too short for the SG_IO bound).
    pub fn window(&self) -> Option<Duration> {
        self.expires().then(|| {
            self.cmd_time_out
                .saturating_sub(self.sg_bound)
                .saturating_sub(self.margin)
        })
    }

    /// The rule: may an SG_IO start at `now` for a command the ring did not
    /// hold at `seen_after`? An unknown `seen_after` may not, where
    /// commands expire.
    pub fn may_start(&self, seen_after: Option<Stamp>, now: Stamp) -> bool {
        match (self.window(), seen_after) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(w), Some(s)) => !w.is_zero() && now.since(s) + CLOCK_SLACK <= w,
        }
    }

    /// How often an idle crew looks at the ring, so that a command that
    /// arrives while the daemon runs normally is found well inside its
    /// window: half the window, at most a second.
    pub fn scan_every(&self) -> Duration {
        match self.window() {
            Some(w) if !w.is_zero() => (w / 2).clamp(Duration::from_millis(10), MAX_SCAN_EVERY),
            _ => MAX_SCAN_EVERY,
        }
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        match self.window() {
            None => format!(
                "cmd_time_out 0 (LIO never fails a command back), SG_IO timeout {:.0} s",
                self.sg_timeout.as_secs_f64()
            ),
            Some(w) => format!(
                "cmd_time_out {} s, SG_IO timeout {:.1} s{}{}: a command that waited more \
                 than {:.1} s since the ring read before it is refused BUSY, unrun",
                self.cmd_time_out.as_secs(),
                self.sg_timeout.as_secs_f64(),
                if self.sg_bound - self.queueing > self.sg_timeout {
                    format!(
                        " (the kernel makes it {:.0} s)",
                        (self.sg_bound - self.queueing).as_secs_f64()
                    )
                } else {
                    String::new()
                },
                if self.queueing.is_zero() {
                    String::new()
                } else {
                    format!(
                        ", plus up to {} s in the transport's recovery",
                        self.queueing.as_secs()
                    )
                },
                w.as_secs_f64()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const Z: Duration = Duration::ZERO;

    #[test]
    fn the_default_timeout_fits_the_default_cmd_time_out() {
        let t = Timing::new(S(30), S(20), BLOCK_SG_FLOOR);
        assert_eq!((t.sg_timeout, t.sg_bound, t.margin), (S(20), S(20), S(5)));
        assert!(!t.lowered);
        assert_eq!(t.window(), Some(S(5)));
        assert_eq!(t.scan_every(), S(1));
    }

    #[test]
    fn a_timeout_too_long_for_cmd_time_out_is_lowered() {
        let t = Timing::new(S(30), S(600), Duration::ZERO);
        assert!(t.lowered);
        assert_eq!(t.sg_timeout, S(20));
        // A long cmd_time_out leaves a long timeout alone.
        let t = Timing::new(S(3600), S(600), BLOCK_SG_FLOOR);
        assert!(!t.lowered && t.sg_timeout == S(600) && t.margin == S(30));
        assert_eq!(t.window(), Some(S(3600 - 600 - 30)));
    }

    #[test]
    fn the_kernels_floor_counts_against_the_window() {
        // 10 s with a block node: the 7 s floor and the 2 s margin leave 1 s.
        let t = Timing::new(S(10), S(2), BLOCK_SG_FLOOR);
        assert_eq!((t.sg_timeout, t.sg_bound), (S(2), S(7)));
        assert_eq!(t.window(), Some(S(1)));
        assert_eq!(t.scan_every(), Duration::from_millis(500));
        // Through an sg node the same settings leave 6 s.
        let t = Timing::new(S(10), S(2), Duration::ZERO);
        assert_eq!(t.window(), Some(S(6)));
        // Too short to serve at all through a block node.
        let t = Timing::new(S(8), S(2), BLOCK_SG_FLOOR);
        assert_eq!(t.window(), Some(Duration::ZERO));
        let now = Stamp::now();
        assert!(!t.may_start(Some(now), now));
    }

    #[test]
    fn the_rule_bounds_the_wait_from_the_read_before() {
        let t = Timing::new(S(30), S(20), BLOCK_SG_FLOOR);
        let seen = Stamp::from_nanos(1 << 40);
        assert!(t.may_start(Some(seen), seen));
        let last = seen + (S(5) - CLOCK_SLACK);
        assert!(t.may_start(Some(seen), last));
        assert!(!t.may_start(Some(seen), last + Duration::from_millis(1)));
        assert!(!t.may_start(None, seen));
        // Every start it allows ends, SG_IO bound and margin included,
        // before the earliest deadline LIO can have given the command.
        for ms in (0..40_000).step_by(250) {
            let now = seen + Duration::from_millis(ms);
            if t.may_start(Some(seen), now) {
                // Even if the coarse clock lagged a whole CLOCK_SLACK.
                assert!(now + CLOCK_SLACK + t.sg_bound + t.margin <= seen + t.cmd_time_out);
            }
        }
    }

    #[test]
    fn the_cmd_time_out_a_timeout_needs() {
        // LIO's default is just what the default disk timeout needs.
        assert_eq!(Timing::cmd_time_out_for(S(20), BLOCK_SG_FLOOR, Z), S(30));
        assert_eq!(Timing::cmd_time_out_for(S(2), BLOCK_SG_FLOOR, Z), S(11));
        assert_eq!(Timing::cmd_time_out_for(S(2), Duration::ZERO, Z), S(6));
        assert_eq!(Timing::cmd_time_out_for(S(500), Duration::ZERO, Z), S(560));
        assert_eq!(
            Timing::cmd_time_out_for(S(14400), Duration::ZERO, Z),
            S(14460)
        );
        for w in [1, 7, 19, 20, 21, 90, 120, 121, 500, 3600] {
            let t = Timing::cmd_time_out_for(S(w), BLOCK_SG_FLOOR, Z);
            let tm = Timing::new(t, S(w), BLOCK_SG_FLOOR);
            assert!(!tm.lowered && tm.window().unwrap() >= tm.margin, "{w}");
            // And not a second less.
            let tm = Timing::new(t - S(1), S(w), BLOCK_SG_FLOOR);
            assert!(tm.lowered || tm.window().unwrap() < tm.margin, "{w}");
        }
    }

    #[test]
    fn a_transports_recovery_counts_into_the_bound() {
        // An iSCSI path with replacement_timeout 5 s under LIO's default
        // cmd_time_out: the wanted 20 s is lowered to leave room for it.
        let t = Timing::queued(S(30), S(20), BLOCK_SG_FLOOR, S(5));
        assert_eq!((t.sg_timeout, t.sg_bound, t.margin), (S(15), S(20), S(5)));
        assert!(t.lowered);
        assert_eq!(t.window(), Some(S(5)));
        assert!(t
            .describe()
            .contains("plus up to 5 s in the transport's recovery"));
        // Every start it allows ends, queueing included, before the
        // earliest deadline.
        let seen = Stamp::from_nanos(1 << 40);
        for ms in (0..40_000).step_by(250) {
            let now = seen + Duration::from_millis(ms);
            if t.may_start(Some(seen), now) {
                assert!(now + CLOCK_SLACK + t.sg_bound + t.margin <= seen + t.cmd_time_out);
            }
        }
        // iscsid's default replacement_timeout (120 s) leaves no window
        // under 30 s: nothing may start, and what would is named.
        let t = Timing::queued(S(30), S(20), BLOCK_SG_FLOOR, S(120));
        assert_eq!(t.window(), Some(Duration::ZERO));
        assert_eq!(
            Timing::cmd_time_out_for(S(20), BLOCK_SG_FLOOR, S(5)),
            Timing::cmd_time_out_for(S(25), BLOCK_SG_FLOOR, Z)
        );
        // Without cmd_time_out the bound still says how long an SG_IO lasts.
        let t = Timing::queued(Duration::ZERO, S(20), BLOCK_SG_FLOOR, S(5));
        assert_eq!(t.sg_bound, S(25));
    }

    #[test]
    fn the_coarse_clock_moves_and_stamps_add() {
        let a = Stamp::now();
        std::thread::sleep(Duration::from_millis(30));
        let b = Stamp::now();
        assert!(b > a && b.since(a) >= Duration::from_millis(10));
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!((a + S(2)).since(a), S(2));
    }

    #[test]
    fn without_cmd_time_out_nothing_expires() {
        let t = Timing::new(Duration::ZERO, S(600), BLOCK_SG_FLOOR);
        assert!(!t.expires() && t.window().is_none());
        assert_eq!(t.sg_timeout, S(600));
        assert!(t.may_start(None, Stamp::now()));
        assert!(t.describe().contains("never"));
    }
}
