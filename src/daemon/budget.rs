//! The daemon-wide bound on SG_IO threads (`run --max-threads`): every
//! device's crew draws its threads from one [`Budget`], except its first
//! thread, so that a device can always serve one command at a time
//! whatever the others do. When the bound binds the log says so once for
//! the whole daemon, and once more when it has stayed slack for a while.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the thread limit must stay slack before a binding episode is
/// over and said to be: a limit that binds on and off under a steady load
/// is one episode, two lines in the log, not two per flicker.
const BINDING_QUIET: Duration = Duration::from_secs(30);

/// The daemon-wide bound on crew threads. When it first refuses a thread
/// it says so once for the whole daemon, and once more when it has not
/// bound for [`BINDING_QUIET`]; each device's own waits go to the debug
/// log.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    used: AtomicUsize,
    binding: Mutex<Binding>,
}

/// Crews the limit holds back now, and the episode the log has told of.
#[derive(Debug, Default)]
struct Binding {
    holding: usize,
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Episode {
    since: Instant,
    /// When `holding` last fell to 0 (None while it is above).
    slack_since: Option<Instant>,
    /// Times a crew was held back with none held before, this episode.
    binds: u64,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit: AtomicUsize::new(limit.max(1)),
            used: AtomicUsize::new(0),
            binding: Mutex::new(Binding::default()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new bound; threads above it finish their commands and retire.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Relaxed);
    }

    /// Threads running now, all crews together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// A crew's first thread: always granted.
    pub(super) fn take_first(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < self.limit()).then_some(u + 1)
            })
            .is_ok()
    }

    pub(super) fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::Relaxed);
    }

    /// Crews the limit holds back now.
    pub fn holding(&self) -> usize {
        self.binding.lock().unwrap().holding
    }

    /// A crew is held back (`on`) or no longer is.
    pub(super) fn hold(&self, on: bool, label: &str, waiting: usize) {
        self.hold_at(on, label, waiting, Instant::now());
    }

    /// [`Budget::hold`] at `now`. Returns whether it logged the start of an
    /// episode.
    fn hold_at(&self, on: bool, label: &str, waiting: usize, now: Instant) -> bool {
        let mut b = self.binding.lock().unwrap();
        if !on {
            b.holding = b.holding.saturating_sub(1);
            if b.holding == 0 {
                if let Some(e) = b.episode.as_mut() {
                    e.slack_since = Some(now);
                }
            }
            return false;
        }
        b.holding += 1;
        if b.holding > 1 {
            return false;
        }
        if let Some(e) = b.episode.as_mut() {
            e.slack_since = None;
            e.binds += 1;
            return false;
        }
        b.episode = Some(Episode {
            since: now,
            slack_since: None,
            binds: 1,
        });
        log::warn!(
            "the daemon-wide thread limit ({} SG_IO threads) binds: commands wait \
             for a thread ({label} first, {waiting} commands); raise run \
             --max-threads (or io.max_threads) if the backing devices can take more",
            self.limit()
        );
        true
    }

    /// Called about once a second: ends (and logs the end of) an episode
    /// once the limit has not bound for [`BINDING_QUIET`].
    pub fn tick(&self) {
        self.tick_at(Instant::now());
    }

    /// [`Budget::tick`] at `now`. Returns whether it ended an episode.
    fn tick_at(&self, now: Instant) -> bool {
        let mut b = self.binding.lock().unwrap();
        let Some(e) = b.episode.as_ref() else {
            return false;
        };
        let Some(slack) = e.slack_since else {
            return false;
        };
        if now.saturating_duration_since(slack) < BINDING_QUIET {
            return false;
        }
        log::info!(
            "the daemon-wide thread limit no longer binds (it held commands back {} \
             times over {} s)",
            e.binds,
            slack.saturating_duration_since(e.since).as_secs()
        );
        b.episode = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A limit that binds on and off is one episode: one line when it
    /// starts, one when it has stayed slack for BINDING_QUIET, none for the
    /// flickers between.
    #[test]
    fn a_flickering_thread_limit_is_one_episode() {
        let b = Budget::new(4);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(b.hold_at(true, "a", 3, at(0)));
        assert!(!b.hold_at(true, "b", 1, at(1)));
        assert_eq!(b.holding(), 2);
        assert!(!b.hold_at(false, "a", 0, at(2)));
        assert!(!b.hold_at(false, "b", 0, at(3)));
        assert_eq!(b.holding(), 0);
        // Slack, but not for long enough: the episode goes on.
        assert!(!b.tick_at(at(10)));
        assert!(!b.hold_at(true, "c", 2, at(20)));
        assert!(!b.hold_at(false, "c", 0, at(21)));
        // The second slack restarted the quiet clock.
        assert!(!b.tick_at(at(3) + BINDING_QUIET));
        assert!(!b.tick_at(at(21) + BINDING_QUIET - Duration::from_secs(1)));
        assert!(b.tick_at(at(21) + BINDING_QUIET));
        assert!(!b.tick_at(at(100)));
        // A new episode after the quiet time is told of again.
        assert!(b.hold_at(true, "d", 1, at(120)));
        // While held back, no tick ends it however long it lasts.
        assert!(!b.tick_at(at(1000)));
        assert_eq!(b.holding(), 1);
    }
}
