//! Leader/followers dispatch: the threads of one device (its *crew*).
//!
//! SG_IO on a block node is synchronous (that is what makes it zero-copy),
//! so every command in flight at the backing device needs a thread blocked
//! in the ioctl. One thread of a crew at a time is the *leader*: it waits
//! for the kernel's doorbell and reads the ring ([`Work::lead`]). When it
//! finds commands it gives up the lead, takes one command and runs it
//! itself, so a lone command costs no thread hop; an idle follower is woken
//! (or a thread started) to lead next and one more for every further
//! command it found. A thread that finishes a command takes the next
//! waiting one, else the lead if nobody holds it, else it parks; parked
//! followers retire after [`Crew::IDLE_RETIRE`]. A deep queue gets one
//! thread per command, up to the crew's cap (the backing device's queue
//! depth), and one thread more leads while all of them are busy: the ring
//! is read whenever the kernel rings, so the age of a command that waits
//! for a free thread is measured from a recent read (see `crate::expiry`),
//! and a crew that is merely busy is never taken for a stalled one.
//!
//! All crews draw their threads from one daemon-wide [`Budget`]. A crew's
//! first thread is outside the bound, so every device can always serve at
//! least one command at a time whatever the others do.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// What the leader reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// New items were pushed.
    Items,
    /// The crew is to end (after the items already queued have run).
    Exit,
}

/// The work of one crew: how its leader waits for items and how an item
/// runs.
pub trait Work: Send + Sync + Sized + 'static {
    type Item: Send + 'static;
    /// Per-thread buffers, reused from item to item.
    type Scratch: Default;
    /// Runs on the leader only (one thread at a time): waits until there
    /// are items and appends them to `out`, or says the crew is to end.
    fn lead(&self, crew: &Crew<Self>, out: &mut Vec<Self::Item>, s: &mut Self::Scratch) -> Lead;
    fn run(&self, item: Self::Item, s: &mut Self::Scratch);
    /// Called when the last running item of a busy spell finished (no
    /// lock held).
    fn quiet(&self) {}
    /// A bound the work sets on items in flight when `next` is the next
    /// item to start, besides the crew's cap (e.g. from what it measures
    /// of the backing device and what `next` asks of it): `next` starts
    /// only while fewer items than this run.
    fn limit(&self, next: &Self::Item) -> usize {
        let _ = next;
        usize::MAX
    }
    /// For logs.
    fn label(&self) -> &str;
}

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
    fn take_first(&self) {
        self.used.fetch_add(1, Ordering::Relaxed);
    }

    fn try_take(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u < self.limit()).then_some(u + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.used.fetch_sub(1, Ordering::Relaxed);
    }

    /// Crews the limit holds back now.
    pub fn holding(&self) -> usize {
        self.binding.lock().unwrap().holding
    }

    /// A crew is held back (`on`) or no longer is.
    fn hold(&self, on: bool, label: &str, waiting: usize) {
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

struct State<I> {
    /// Items read and not started.
    queue: VecDeque<I>,
    /// A thread holds the lead (or is about to take it up).
    leader: bool,
    threads: usize,
    /// Parked followers, the most recently parked last.
    idle: Vec<Thread>,
    /// Threads woken or started that have not yet looked for work.
    coming: usize,
    running: usize,
    peak_running: usize,
    exit: bool,
    /// The budget refused a thread and the refusal was logged.
    held_back: bool,
}

/// The threads of one device. Start it with [`Crew::start`]. At most `cap`
/// items run at once: a thread takes an item or the lead only below it.
pub struct Crew<W: Work> {
    work: W,
    state: Mutex<State<W::Item>>,
    /// Signalled when the last thread has left.
    gone: Condvar,
    cap: AtomicUsize,
    budget: Arc<Budget>,
    idle_retire: Duration,
    /// Thread name (at most 15 bytes).
    name: String,
}

/// Crew threads run shallow code (no recursion, buffers on the heap).
const STACK: usize = 256 << 10;

impl<W: Work> Crew<W> {
    pub const IDLE_RETIRE: Duration = Duration::from_secs(10);

    /// Starts the crew with one thread, which takes up the lead. `name`
    /// names its threads (cut to 15 bytes).
    pub fn start(
        name: &str,
        work: W,
        cap: usize,
        budget: Arc<Budget>,
    ) -> std::io::Result<Arc<Crew<W>>> {
        Self::start_with(name, work, cap, budget, Self::IDLE_RETIRE)
    }

    pub fn start_with(
        name: &str,
        work: W,
        cap: usize,
        budget: Arc<Budget>,
        idle_retire: Duration,
    ) -> std::io::Result<Arc<Crew<W>>> {
        let mut name = name.to_string();
        while name.len() > 15 {
            name.pop();
        }
        let crew = Arc::new(Crew {
            work,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                leader: false,
                threads: 1,
                idle: Vec::new(),
                coming: 1,
                running: 0,
                peak_running: 0,
                exit: false,
                held_back: false,
            }),
            gone: Condvar::new(),
            cap: AtomicUsize::new(cap.max(1)),
            budget,
            idle_retire,
            name,
        });
        crew.budget.take_first();
        if let Err(e) = crew.spawn() {
            crew.budget.give_back();
            return Err(e);
        }
        Ok(crew)
    }

    pub fn work(&self) -> &W {
        &self.work
    }

    /// The most items in flight this crew is configured for.
    pub fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// How many items may run while `next` starts: the cap, lowered by
    /// the work's own limit for that item.
    fn cap_for(&self, next: Option<&W::Item>) -> usize {
        let limit = next.map_or(usize::MAX, |i| self.work.limit(i));
        self.cap().min(limit).max(1)
    }

    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        self.lock().threads
    }

    /// The most items that ran at once so far.
    pub fn peak_running(&self) -> usize {
        self.lock().peak_running
    }

    /// True once every thread has left.
    pub fn finished(&self) -> bool {
        self.lock().threads == 0
    }

    /// Runs `f` while no item runs and none can start (the crew's lock is
    /// held throughout); `None` if items are running now.
    pub fn quiesced<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        let st = self.lock();
        if st.running > 0 {
            return None;
        }
        let r = f();
        drop(st);
        Some(r)
    }

    /// Waits up to `timeout` for every thread to leave; true if they did.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        while st.threads > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.gone.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, State<W::Item>> {
        self.state.lock().unwrap()
    }

    fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(STACK)
            .spawn(move || me.thread_main())
            .map(|_| ())
    }

    /// Makes sure a thread is on its way for every waiting item and for
    /// the lead if nobody holds it: parked followers first (the most
    /// recently parked, whose caches are warm), then new threads up to the
    /// cap and the budget.
    fn arrange(self: &Arc<Self>, st: &mut State<W::Item>) {
        // Items beyond the cap (or the work's limit for the first of them)
        // wait for a running one to finish; the lead is always wanted.
        let free = self.cap_for(st.queue.front()).saturating_sub(st.running);
        let lead = !st.leader && !st.exit;
        let want = st.queue.len().min(free) + usize::from(lead);
        let mut need = want.saturating_sub(st.coming);
        while need > 0 {
            let Some(t) = st.idle.pop() else { break };
            st.coming += 1;
            t.unpark();
            need -= 1;
        }
        // The cap's threads and the leader.
        while need > 0 && st.threads < self.cap() + 1 {
            if !self.budget.try_take() {
                if !st.held_back {
                    log::debug!(
                        "{}: held back by the daemon-wide thread limit ({}): {} commands wait \
                         for a thread ({} threads on this device)",
                        self.work.label(),
                        self.budget.limit(),
                        st.queue.len(),
                        st.threads
                    );
                    self.budget.hold(true, self.work.label(), st.queue.len());
                    st.held_back = true;
                }
                return;
            }
            if let Err(e) = self.spawn() {
                self.budget.give_back();
                log::error!("{}: cannot start a thread: {e}", self.work.label());
                return;
            }
            st.threads += 1;
            st.coming += 1;
            need -= 1;
        }
        if need == 0 && st.held_back {
            log::debug!(
                "{}: no longer held back by the thread limit",
                self.work.label()
            );
            self.budget.hold(false, self.work.label(), 0);
            st.held_back = false;
        }
    }

    fn thread_main(self: Arc<Self>) {
        let mut s = W::Scratch::default();
        let mut found: Vec<W::Item> = Vec::new();
        let mut st = self.lock();
        st.coming -= 1;
        'work: loop {
            let startable = st
                .queue
                .front()
                .is_some_and(|i| st.running < self.cap_for(Some(i)));
            if startable {
                let item = st.queue.pop_front().expect("not empty");
                st.running += 1;
                st.peak_running = st.peak_running.max(st.running);
                self.arrange(&mut st);
                drop(st);
                self.work.run(item, &mut s);
                st = self.lock();
                st.running -= 1;
                if st.running == 0 {
                    drop(st);
                    self.work.quiet();
                    st = self.lock();
                }
                continue;
            }
            if st.exit {
                // Items still queued are run by the threads now running.
                break;
            }
            if !st.leader {
                st.leader = true;
                drop(st);
                let r = self.work.lead(&self, &mut found, &mut s);
                st = self.lock();
                st.leader = false;
                st.queue.extend(found.drain(..));
                if r == Lead::Exit {
                    st.exit = true;
                    while let Some(t) = st.idle.pop() {
                        st.coming += 1;
                        t.unpark();
                    }
                }
                continue;
            }
            // A follower: park until claimed (taken off `idle` by
            // `arrange` or at exit) or retired.
            let me = std::thread::current();
            st.idle.push(me.clone());
            let since = Instant::now();
            loop {
                let left = self.idle_retire.saturating_sub(since.elapsed());
                drop(st);
                std::thread::park_timeout(left);
                st = self.lock();
                let Some(i) = st.idle.iter().position(|t| t.id() == me.id()) else {
                    st.coming -= 1;
                    continue 'work;
                };
                if since.elapsed() >= self.idle_retire {
                    st.idle.remove(i);
                    break 'work;
                }
            }
        }
        st.threads -= 1;
        self.budget.give_back();
        if st.threads == 0 {
            if st.held_back {
                self.budget.hold(false, self.work.label(), 0);
                st.held_back = false;
            }
            self.gone.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc;

    /// A fake device: items arrive on a channel (the "ring"); running an
    /// item sleeps `service` (a backing device that takes time to answer)
    /// and records how many ran at once.
    struct Fake {
        rx: Mutex<mpsc::Receiver<u32>>,
        service: Duration,
        now: AtomicUsize,
        peak: AtomicUsize,
        done: AtomicUsize,
        stop: AtomicBool,
        leads: AtomicUsize,
        /// Items the leader has read.
        read: AtomicUsize,
        /// Limit items below 100 to one at a time, the others to two.
        per_item: AtomicBool,
    }

    impl Work for Fake {
        type Item = u32;
        type Scratch = ();
        fn lead(&self, _: &Crew<Self>, out: &mut Vec<u32>, _: &mut ()) -> Lead {
            self.leads.fetch_add(1, Ordering::SeqCst);
            let rx = self.rx.lock().unwrap();
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return Lead::Exit;
                }
                match rx.recv_timeout(Duration::from_millis(5)) {
                    Ok(v) => {
                        out.push(v);
                        out.extend(rx.try_iter());
                        self.read.fetch_add(out.len(), Ordering::SeqCst);
                        return Lead::Items;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return Lead::Exit,
                }
            }
        }
        fn run(&self, _: u32, _: &mut ()) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(self.service);
            self.now.fetch_sub(1, Ordering::SeqCst);
            self.done.fetch_add(1, Ordering::SeqCst);
        }
        fn limit(&self, next: &u32) -> usize {
            match (self.per_item.load(Ordering::SeqCst), *next >= 100) {
                (false, _) => usize::MAX,
                (true, false) => 1,
                (true, true) => 2,
            }
        }
        fn label(&self) -> &str {
            "fake"
        }
    }

    fn fake(service: Duration) -> (Fake, mpsc::Sender<u32>) {
        let (tx, rx) = mpsc::channel();
        (
            Fake {
                rx: Mutex::new(rx),
                service,
                now: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                leads: AtomicUsize::new(0),
                read: AtomicUsize::new(0),
                per_item: AtomicBool::new(false),
            },
            tx,
        )
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Items that arrive together while earlier ones are still running all
    /// get a thread: the ring is read while the first items block.
    #[test]
    fn a_queue_of_slow_items_runs_at_the_cap() {
        let (w, tx) = fake(Duration::from_millis(200));
        let crew = Crew::start("t", w, 16, Budget::new(64)).unwrap();
        // A steady stream: one item at a time, each arriving while the
        // earlier ones still run.
        for i in 0..16 {
            tx.send(i).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_until("16 done", || crew.work().done.load(Ordering::SeqCst) == 16);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 16);
        assert_eq!(crew.peak_running(), 16);
        // 20 more at once: never more than the cap of 16 at a time.
        for i in 0..20 {
            tx.send(i).unwrap();
        }
        wait_until("36 done", || crew.work().done.load(Ordering::SeqCst) == 36);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 16);
        // The cap's threads and one that leads.
        assert!(crew.threads() <= 17, "{} threads", crew.threads());
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// While every thread the cap allows is busy, one more reads the
    /// "ring": items are taken in as they come, so how long they wait for
    /// a thread is measured from a recent read, not from the last time a
    /// thread was free.
    #[test]
    fn the_ring_is_read_while_every_thread_is_busy() {
        let (w, tx) = fake(Duration::from_millis(400));
        let crew = Crew::start("t", w, 2, Budget::new(64)).unwrap();
        tx.send(0).unwrap();
        tx.send(1).unwrap();
        wait_until("2 running", || crew.work().now.load(Ordering::SeqCst) == 2);
        for i in 2..5 {
            tx.send(i).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Read at once, though none of them can start yet.
        wait_until("3 more read", || {
            crew.work().read.load(Ordering::SeqCst) == 5
        });
        assert_eq!(crew.work().done.load(Ordering::SeqCst), 0);
        assert_eq!(crew.work().now.load(Ordering::SeqCst), 2);
        wait_until("5 done", || crew.work().done.load(Ordering::SeqCst) == 5);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 2);
        assert!(crew.threads() <= 3, "{} threads", crew.threads());
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// A lone item runs on the thread that read it: the lead passes to
    /// another thread, the item does not.
    #[test]
    fn items_one_at_a_time_keep_two_threads() {
        let (w, tx) = fake(Duration::from_millis(1));
        let crew = Crew::start("t", w, 8, Budget::new(64)).unwrap();
        for i in 0..50 {
            tx.send(i).unwrap();
            wait_until("done", || {
                crew.work().done.load(Ordering::SeqCst) == i as usize + 1
            });
        }
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 1);
        assert!(crew.threads() <= 2, "{} threads", crew.threads());
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

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

    /// The daemon-wide budget bounds all crews together, but never takes a
    /// crew's first thread; a crew stuck on a slow device cannot take the
    /// threads another crew's first thread needs.
    #[test]
    fn the_budget_bounds_every_crew_but_never_the_first_thread() {
        let budget = Budget::new(6);
        let (slow, slow_tx) = fake(Duration::from_millis(300));
        let (fast, fast_tx) = fake(Duration::from_millis(1));
        let slow = Crew::start("s", slow, 32, budget.clone()).unwrap();
        let fast = Crew::start("f", fast, 32, budget.clone()).unwrap();
        for i in 0..20 {
            slow_tx.send(i).unwrap();
        }
        wait_until("slow crew at the budget", || {
            slow.work().now.load(Ordering::SeqCst) >= 5
        });
        assert_eq!(budget.used(), 6);
        // One crew held back: the daemon-wide line counts it.
        assert_eq!(budget.holding(), 1);
        // The fast device still serves, on its own first thread.
        for i in 0..10 {
            fast_tx.send(i).unwrap();
            wait_until("fast done", || {
                fast.work().done.load(Ordering::SeqCst) == i as usize + 1
            });
        }
        assert!(slow.work().peak.load(Ordering::SeqCst) <= 5);
        wait_until("slow done", || {
            slow.work().done.load(Ordering::SeqCst) == 20
        });
        slow.work().stop.store(true, Ordering::SeqCst);
        fast.work().stop.store(true, Ordering::SeqCst);
        assert!(slow.wait_gone(Duration::from_secs(5)));
        assert!(fast.wait_gone(Duration::from_secs(5)));
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.holding(), 0);
    }

    /// Lowering the cap lowers the items in flight at once, even with more
    /// threads parked than the new cap.
    #[test]
    fn a_lower_cap_takes_effect_at_once() {
        let (w, tx) = fake(Duration::from_millis(100));
        let crew = Crew::start("t", w, 16, Budget::new(64)).unwrap();
        for i in 0..16 {
            tx.send(i).unwrap();
        }
        wait_until("16 done", || crew.work().done.load(Ordering::SeqCst) == 16);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 16);
        crew.set_cap(4);
        crew.work().peak.store(0, Ordering::SeqCst);
        for i in 0..16 {
            tx.send(i).unwrap();
        }
        wait_until("32 done", || crew.work().done.load(Ordering::SeqCst) == 32);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 4);
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// The work's limit for the next item holds it back while that many
    /// run, and lets other items through at their own limit.
    #[test]
    fn the_works_limit_applies_per_item() {
        let (w, tx) = fake(Duration::from_millis(50));
        w.per_item.store(true, Ordering::SeqCst);
        let crew = Crew::start("t", w, 16, Budget::new(64)).unwrap();
        for i in 0..8 {
            tx.send(i).unwrap();
        }
        wait_until("8 done", || crew.work().done.load(Ordering::SeqCst) == 8);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 1);
        for i in 100..108 {
            tx.send(i).unwrap();
        }
        wait_until("16 done", || crew.work().done.load(Ordering::SeqCst) == 16);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 2);
        // Mixed: never more than two, and all of them run.
        crew.work().peak.store(0, Ordering::SeqCst);
        for i in 0..16 {
            tx.send(if i % 2 == 0 { i } else { 100 + i }).unwrap();
        }
        wait_until("32 done", || crew.work().done.load(Ordering::SeqCst) == 32);
        assert!(crew.work().peak.load(Ordering::SeqCst) <= 2);
        // Without the limit the crew goes to its cap again.
        crew.work().per_item.store(false, Ordering::SeqCst);
        crew.work().peak.store(0, Ordering::SeqCst);
        for i in 0..16 {
            tx.send(i).unwrap();
        }
        wait_until("48 done", || crew.work().done.load(Ordering::SeqCst) == 48);
        assert_eq!(crew.work().peak.load(Ordering::SeqCst), 16);
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Followers retire when idle; the leader stays.
    #[test]
    fn idle_followers_retire() {
        let (w, tx) = fake(Duration::from_millis(100));
        let crew =
            Crew::start_with("t", w, 8, Budget::new(64), Duration::from_millis(200)).unwrap();
        for i in 0..8 {
            tx.send(i).unwrap();
        }
        wait_until("8 done", || crew.work().done.load(Ordering::SeqCst) == 8);
        assert!(crew.threads() >= 8);
        wait_until("retired", || crew.threads() == 1);
        // And it still serves.
        tx.send(9).unwrap();
        wait_until("9 done", || crew.work().done.load(Ordering::SeqCst) == 9);
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Items queued when the leader says Exit still run before the crew
    /// ends.
    #[test]
    fn exit_runs_what_was_read() {
        let (w, tx) = fake(Duration::from_millis(50));
        let crew = Crew::start("t", w, 2, Budget::new(64)).unwrap();
        for i in 0..6 {
            tx.send(i).unwrap();
        }
        drop(tx);
        assert!(crew.wait_gone(Duration::from_secs(5)));
        assert_eq!(crew.work().done.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn quiesced_runs_only_when_nothing_runs() {
        let (w, tx) = fake(Duration::from_millis(300));
        let crew = Crew::start("t", w, 2, Budget::new(64)).unwrap();
        assert_eq!(crew.quiesced(|| 7), Some(7));
        tx.send(1).unwrap();
        wait_until("running", || crew.work().now.load(Ordering::SeqCst) == 1);
        assert_eq!(crew.quiesced(|| 7), None);
        wait_until("done", || crew.work().done.load(Ordering::SeqCst) == 1);
        wait_until("quiet", || crew.quiesced(|| ()).is_some());
        crew.work().stop.store(true, Ordering::SeqCst);
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }
}
