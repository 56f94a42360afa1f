//! One device's defence against running a command LIO has already failed
//! back (the rule is `crate::expiry`'s): LIO's `cmd_time_out` for the
//! device, re-read every second; the rule applied before every SG_IO; and
//! one log line per stall saying how long it lasted and what was refused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::CmdError;
use crate::expiry::{Stamp, Timing};

/// How often `cmd_time_out` is read again.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// A stall's refusals are logged once none came for this long.
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// What one stall refused so far.
struct Episode {
    refused: u64,
    /// The longest a refused command had waited since the ring read
    /// before it.
    longest: Duration,
    last: Stamp,
    timing: Timing,
}

pub struct Guard {
    label: String,
    /// The device's configfs `attrib/cmd_time_out` (seconds).
    attr: PathBuf,
    cmd_time_out_ms: AtomicU64,
    refreshed: Mutex<Stamp>,
    /// Why the last read failed (logged once).
    read_failed: AtomicBool,
    /// Commands first seen before this (nanoseconds of `Stamp`; 0: none)
    /// never start: set when `cmd_time_out` changes, since the commands
    /// the ring held then were stamped with the old value.
    refuse_before_ns: AtomicU64,
    episode: Mutex<Option<Episode>>,
    in_episode: AtomicBool,
}

/// Reads a `cmd_time_out` attribute (whole seconds).
pub fn read_cmd_time_out(attr: &std::path::Path) -> Result<Duration, String> {
    let text = std::fs::read_to_string(attr).map_err(|e| format!("{}: {e}", attr.display()))?;
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{}: not a number: {:?}", attr.display(), text.trim()))
}

impl Guard {
    /// A guard for a device whose `cmd_time_out` (read from `attr` at
    /// attach) is `cmd_time_out`.
    pub fn new(label: &str, attr: PathBuf, cmd_time_out: Duration) -> Guard {
        let now = Stamp::now();
        Guard {
            label: label.to_string(),
            attr,
            cmd_time_out_ms: AtomicU64::new(cmd_time_out.as_millis() as u64),
            refreshed: Mutex::new(now),
            read_failed: AtomicBool::new(false),
            refuse_before_ns: AtomicU64::new(0),
            episode: Mutex::new(None),
            in_episode: AtomicBool::new(false),
        }
    }

    pub fn cmd_time_out(&self) -> Duration {
        Duration::from_millis(self.cmd_time_out_ms.load(Ordering::Acquire))
    }

    /// Reads `cmd_time_out` again if a second has passed since the last
    /// read. Returns the old and new values when it changed: the commands
    /// the ring held before `now` are then refused, since LIO stamped them
    /// with the old value (it lets the value change only while the device
    /// is not exported, and an unexport waits only for the commands it has
    /// not failed back).
    pub fn refresh(&self, now: Stamp) -> Option<(Duration, Duration)> {
        {
            let mut at = self.refreshed.lock().unwrap();
            if now.since(*at) < REFRESH_EVERY {
                return None;
            }
            *at = now;
        }
        let new = match read_cmd_time_out(&self.attr) {
            Ok(v) => {
                self.read_failed.store(false, Ordering::Relaxed);
                v
            }
            Err(e) => {
                if !self.read_failed.swap(true, Ordering::Relaxed) {
                    if self.attr.exists() {
                        log::warn!("{}: cannot read cmd_time_out again ({e})", self.label);
                    } else {
                        // An unexport removes the directory before the
                        // uio device: nothing is wrong.
                        log::debug!(
                            "{}: cmd_time_out gone, the device is being removed",
                            self.label
                        );
                    }
                }
                return None;
            }
        };
        let old = self.cmd_time_out();
        if new == old {
            return None;
        }
        self.refuse_before_ns
            .store(now.nanos().max(1), Ordering::Release);
        self.cmd_time_out_ms
            .store(new.as_millis() as u64, Ordering::Release);
        Some((old, new))
    }

    /// The rule, before an SG_IO for a command first seen after
    /// `seen_after`: Ok to send it, or the error to answer instead. A
    /// refusal is counted towards the current stall's log line.
    pub fn admit(
        &self,
        seen_after: Option<Stamp>,
        timing: &Timing,
        now: Stamp,
    ) -> Result<(), CmdError> {
        let cut = self.refuse_before_ns.load(Ordering::Acquire);
        let before_cut = cut != 0 && seen_after.is_none_or(|s| s.nanos() < cut);
        if !before_cut && timing.may_start(seen_after, now) {
            return Ok(());
        }
        let waited = seen_after.map_or(Duration::ZERO, |s| now.since(s));
        let mut ep = self.episode.lock().unwrap();
        let e = ep.get_or_insert(Episode {
            refused: 0,
            longest: Duration::ZERO,
            last: now,
            timing: *timing,
        });
        e.refused += 1;
        e.longest = e.longest.max(waited);
        e.last = e.last.max(now);
        self.in_episode.store(true, Ordering::Release);
        Err(CmdError::Expired { waited })
    }

    /// Logs a stall's refusals once none came for a second (or at once
    /// with `flush`). Cheap when there is nothing to log.
    pub fn tick(&self, now: Stamp, flush: bool) {
        if !self.in_episode.load(Ordering::Acquire) {
            return;
        }
        let mut ep = self.episode.lock().unwrap();
        let Some(e) = ep.as_ref() else { return };
        if !flush && now.since(e.last) < QUIET_AFTER {
            return;
        }
        log::warn!(
            "{}: stalled {:.1} s (the longest a command waited since the ring read \
             before it; {}): refused {} command{} with BUSY without running {}; the \
             initiator retries any LIO had not yet failed back",
            self.label,
            e.longest.as_secs_f64(),
            e.timing.describe(),
            e.refused,
            if e.refused == 1 { "" } else { "s" },
            if e.refused == 1 { "it" } else { "them" },
        );
        *ep = None;
        self.in_episode.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::BLOCK_SG_FLOOR;

    fn guard(secs: &str) -> (Guard, tempdir::Dir) {
        let d = tempdir::Dir::new();
        let attr = d.path.join("cmd_time_out");
        std::fs::write(&attr, secs).unwrap();
        let t = read_cmd_time_out(&attr).unwrap();
        (Guard::new("t", attr, t), d)
    }

    /// A directory removed when dropped.
    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "tcmu-sg-stall-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn a_stall_refuses_and_is_one_episode() {
        let (g, _d) = guard("30\n");
        assert_eq!(g.cmd_time_out(), Duration::from_secs(30));
        let t = Timing::new(g.cmd_time_out(), Duration::from_secs(20), BLOCK_SG_FLOOR);
        let seen = Stamp::now();
        assert!(g
            .admit(Some(seen), &t, seen + Duration::from_secs(1))
            .is_ok());
        let late = seen + Duration::from_secs(12);
        for _ in 0..3 {
            let e = g.admit(Some(seen), &t, late).unwrap_err();
            assert_eq!(
                e,
                CmdError::Expired {
                    waited: Duration::from_secs(12)
                }
            );
        }
        {
            let ep = g.episode.lock().unwrap();
            let e = ep.as_ref().unwrap();
            assert_eq!((e.refused, e.longest), (3, Duration::from_secs(12)));
        }
        // Not logged while refusals keep coming, then once.
        g.tick(late + Duration::from_millis(500), false);
        assert!(g.in_episode.load(Ordering::Relaxed));
        g.tick(late + Duration::from_secs(2), false);
        assert!(!g.in_episode.load(Ordering::Relaxed));
        assert!(g.episode.lock().unwrap().is_none());
    }

    #[test]
    fn a_changed_cmd_time_out_refuses_what_the_ring_held_before() {
        let (g, d) = guard("10");
        let t0 = Stamp::now();
        let old = Timing::new(g.cmd_time_out(), Duration::from_secs(2), Duration::ZERO);
        assert!(g.admit(Some(t0), &old, t0).is_ok());
        // Unexported, raised to 600 s, exported again.
        std::fs::write(d.path.join("cmd_time_out"), "600").unwrap();
        assert_eq!(g.refresh(t0), None, "read at most once a second");
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            g.refresh(t1),
            Some((Duration::from_secs(10), Duration::from_secs(600)))
        );
        let new = Timing::new(g.cmd_time_out(), Duration::from_secs(2), Duration::ZERO);
        // A command the ring held before the change (stamped with 10 s) is
        // refused even though 600 s would allow it; one seen after runs.
        assert!(g.admit(Some(t0), &new, t1).is_err());
        assert!(g.admit(Some(t1), &new, t1).is_ok());
        assert_eq!(g.refresh(t1 + Duration::from_secs(2)), None);
    }

    #[test]
    fn an_unreadable_attribute_keeps_the_value() {
        let (g, d) = guard("30");
        std::fs::remove_file(d.path.join("cmd_time_out")).unwrap();
        assert_eq!(g.refresh(Stamp::now() + Duration::from_secs(2)), None);
        assert_eq!(g.cmd_time_out(), Duration::from_secs(30));
        assert!(read_cmd_time_out(&d.path.join("nope")).is_err());
    }
}
