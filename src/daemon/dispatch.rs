//! The threads of one device (its *crew*) and how they share its work.
//!
//! SG_IO on a block node is synchronous (that is what makes it zero-copy),
//! so every command in flight at the backing device needs a thread blocked
//! in the ioctl. One idle thread (up to [`WATCHERS`]) *watches* the ring:
//! it waits in the crew's epoll set, which holds the work's wake-up fds
//! (the kernel's doorbell, the work's timer and wake-ups, edge-triggered)
//! and the crew's call (a semaphore); threads wait in one epoll set
//! exclusively, so an event wakes one of them. The woken thread *looks*
//! ([`Work::look`]: reads the ring) and runs the first command it found
//! itself, and a parked thread, the one parked last (warm), is woken to
//! watch in its place, in parallel with the command; commands beyond the
//! first wake more parked threads or start new ones. A thread that
//! finishes a command takes the next one read and not started, else
//! watches if nobody does, else parks.
//!
//! So a command that finds the watcher asleep costs three sleeps: the wait
//! for the doorbell, the SG_IO and the replacement's wait. Two watchers
//! waiting at once (issue 18) saved the third at a queue depth of one, but
//! cost deep queues 15-25% of their rate at 100 us and inline (issue 25:
//! the doorbell then wakes whichever watcher has waited longest, and the
//! guest idled more with fewer context switches); a depth of one ran at
//! the same rate either way.
//!
//! A deep queue gets one thread per command, up to the crew's cap (the
//! backing device's queue depth), and one thread more waits while all of
//! them are busy: the ring is read whenever the kernel rings, so the age of
//! a command that waits for a free thread is measured from a recent read
//! (see `crate::expiry`), and a crew that is merely busy is never taken for
//! a stalled one. Threads that have run nothing for [`Crew::IDLE_RETIRE`]
//! retire, as long as another one watches.
//!
//! All crews draw their threads from one daemon-wide [`Budget`]. A crew's
//! first thread is outside the bound, so every device can always serve at
//! least one command at a time whatever the others do.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

pub use super::budget::Budget;
use crate::sys::{coarse_now, Epoll, Ready, Semaphore};

/// What a look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lead {
    /// Whatever it read is in `out` (perhaps nothing).
    Read,
    /// The crew is to end (after the items already queued have run).
    Exit,
}

/// The work of one crew: what wakes a waiting thread, what a woken thread
/// does and how an item runs.
pub trait Work: Send + Sync + Sized + 'static {
    type Item: Send + 'static;
    /// Per-thread buffers, reused from item to item.
    type Scratch: Default;
    /// The fds (at most 32) whose input wakes a waiting thread, the
    /// doorbell first. They are edge-triggered: each wake-up of one of
    /// them wakes one waiting thread, whether or not it is read.
    fn wake_fds(&self) -> Vec<RawFd>;
    /// Called by a thread that woke (bit i of `woke` set when
    /// `wake_fds()[i]` woke it; nothing after a timeout); several threads
    /// may look at once. Does what woke it asks, appends new items to
    /// `out`, or says the crew is to end.
    fn look(
        &self,
        crew: &Crew<Self>,
        woke: Ready,
        out: &mut Vec<Self::Item>,
        s: &mut Self::Scratch,
    ) -> Lead;
    fn run(&self, item: Self::Item, s: &mut Self::Scratch);
    /// Whether a thread that ran an item and finds none to start looks
    /// (with `woke` 0) before it sleeps.
    fn look_after_run(&self) -> bool {
        false
    }
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

/// How many idle threads wait on the ring at once; the others park. One
/// (see the module's notes for why not two): when it takes a command, the
/// thread parked last is woken to watch in its place.
const WATCHERS: usize = 1;

/// The token of the crew's call in a thread's epoll set (the work's fds
/// are 0..32).
const CALL: u32 = 63;

struct State<I> {
    /// Items read and not started.
    queue: VecDeque<I>,
    threads: usize,
    /// Threads in (or on their way into) the epoll wait: they watch the
    /// ring, [`WATCHERS`] of them when idle.
    waiting: usize,
    /// Parked threads (beyond the watchers), the most recently parked
    /// last.
    idle: Vec<Thread>,
    /// Calls posted and not yet taken: waiting threads on their way to
    /// the queue.
    called: usize,
    /// Threads started that have not yet looked for work.
    coming: usize,
    running: usize,
    peak_running: usize,
    exit: bool,
    /// The budget refused a thread and the refusal was logged.
    held_back: bool,
}

/// The threads of one device. Start it with [`Crew::start`]. At most `cap`
/// items run at once: a thread takes an item only below it.
pub struct Crew<W: Work> {
    work: W,
    state: Mutex<State<W::Item>>,
    /// Signalled when the last thread has left.
    gone: Condvar,
    /// What waiting threads wait on.
    epoll: Epoll,
    /// Calls a waiting thread to the queue (one post, one thread).
    call: Semaphore,
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

    /// Starts the crew with one thread, which waits. `name` names its
    /// threads (cut to 15 bytes).
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
        let epoll = Epoll::new()?;
        for (i, fd) in work.wake_fds().into_iter().enumerate() {
            assert!(i < 32, "at most 32 wake-up fds");
            epoll.add(fd, i as u32, true)?;
        }
        // Level-triggered: a post that finds no thread asleep is taken by
        // the next to wait, and each post wakes one more thread.
        let call = Semaphore::new()?;
        epoll.add(call.fd(), CALL, false)?;
        let crew = Arc::new(Crew {
            work,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                threads: 1,
                waiting: 0,
                idle: Vec::new(),
                called: 0,
                coming: 1,
                running: 0,
                peak_running: 0,
                exit: false,
                held_back: false,
            }),
            gone: Condvar::new(),
            epoll,
            call,
            cap: AtomicUsize::new(cap.max(1)),
            budget,
            idle_retire,
            name,
        });
        crew.budget.take_first();
        if let Err(e) = crew.spawn(true) {
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

    fn spawn(self: &Arc<Self>, first: bool) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name(self.name.clone())
            .stack_size(STACK)
            .spawn(move || me.thread_main(first))
            .map(|_| ())
    }

    /// Makes sure a thread is on its way for every item that may start,
    /// and that one thread watches the ring beyond them: parked threads
    /// are woken first, then watchers beyond one are called, then new
    /// threads are started up to the cap and the budget.
    fn arrange(self: &Arc<Self>, st: &mut State<W::Item>) {
        // Items beyond the cap (or the work's limit for the first of them)
        // wait for a running one to finish; a watcher is always wanted.
        let free = self.cap_for(st.queue.front()).saturating_sub(st.running);
        let startable = st.queue.len().min(free);
        // Waiting threads not already called away watch the ring.
        let watchers = st.waiting.saturating_sub(st.called);
        let watch = usize::from(!st.exit && watchers == 0);
        let mut need = (startable + watch).saturating_sub(st.coming + st.called);
        // Parked threads first, the most recently parked (warm) first.
        while need > 0 {
            let Some(t) = st.idle.pop() else { break };
            st.coming += 1;
            t.unpark();
            need -= 1;
        }
        // Then waiting threads beyond the one that keeps watching.
        let call = need.min(watchers.saturating_sub(1));
        for _ in 0..call {
            self.call.post();
        }
        st.called += call;
        need -= call;
        // The cap's threads and the one that waits.
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
            if let Err(e) = self.spawn(false) {
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

    /// Calls every waiting and parked thread (at exit).
    fn call_all(&self, st: &mut State<W::Item>) {
        let call = st.waiting.saturating_sub(st.called);
        for _ in 0..call {
            self.call.post();
        }
        st.called += call;
        while let Some(t) = st.idle.pop() {
            st.coming += 1;
            t.unpark();
        }
    }

    /// Looks (see [`Work::look`]) and queues what was found; at exit
    /// calls every waiting thread. Returns with the lock held.
    fn look(
        self: &Arc<Self>,
        woke: Ready,
        found: &mut Vec<W::Item>,
        s: &mut W::Scratch,
    ) -> MutexGuard<'_, State<W::Item>> {
        let r = self.work.look(self, woke, found, s);
        let mut st = self.lock();
        st.queue.extend(found.drain(..));
        if r == Lead::Exit {
            st.exit = true;
            self.call_all(&mut st);
        }
        st
    }

    fn thread_main(self: Arc<Self>, first: bool) {
        let mut s = W::Scratch::default();
        let mut found: Vec<W::Item> = Vec::new();
        // The first thread looks before it waits: the ring may hold
        // commands from before the crew started, which ring no doorbell
        // of this crew's.
        let mut st = if first {
            self.look(Ready::default(), &mut found, &mut s)
        } else {
            self.lock()
        };
        st.coming -= 1;
        // When this thread last ran an item (or started), on the coarse
        // clock: a precise read costs a trap to the clock device on some
        // hosts (an emulated HPET), and this is read around every wait.
        let mut busy_at = coarse_now();
        let mut ran = false;
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
                busy_at = coarse_now();
                ran = true;
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
            if std::mem::take(&mut ran) && self.work.look_after_run() {
                drop(st);
                st = self.look(Ready::default(), &mut found, &mut s);
                continue;
            }
            if st.waiting.saturating_sub(st.called) >= WATCHERS {
                // A thread watches the ring: park until called (taken
                // off `idle` by `arrange` or at exit) or retired.
                let me = std::thread::current();
                st.idle.push(me.clone());
                let since = coarse_now();
                loop {
                    let left = self
                        .idle_retire
                        .saturating_sub(coarse_now().saturating_sub(since));
                    drop(st);
                    std::thread::park_timeout(left);
                    st = self.lock();
                    let Some(i) = st.idle.iter().position(|t| t.id() == me.id()) else {
                        st.coming -= 1;
                        continue 'work;
                    };
                    if coarse_now().saturating_sub(since) >= self.idle_retire {
                        st.idle.remove(i);
                        break 'work;
                    }
                }
            }
            // Wait for the doorbell, the work's own wake-ups or a call.
            st.waiting += 1;
            drop(st);
            let left = self
                .idle_retire
                .saturating_sub(coarse_now().saturating_sub(busy_at));
            let woke = match self.epoll.wait(Some(left)) {
                Ok(w) => w,
                Err(e) => {
                    log::error!("{}: epoll_wait: {e}", self.work.label());
                    std::thread::sleep(Duration::from_millis(100));
                    Ready::default()
                }
            };
            let took_call = woke.bits & (1 << CALL) != 0 && self.call.take();
            st = self.lock();
            st.waiting -= 1;
            if took_call {
                st.called = st.called.saturating_sub(1);
            }
            let work = Ready {
                bits: woke.bits & !(1 << CALL),
                errors: woke.errors & !(1 << CALL),
            };
            if work.bits == 0 {
                if woke.bits != 0 {
                    // A call: the item is taken at the top (or was taken
                    // by another thread).
                    continue;
                }
                if coarse_now().saturating_sub(busy_at) >= self.idle_retire {
                    // Idle for long: retire, unless no other thread would
                    // be left waiting.
                    if st.waiting > st.called {
                        break 'work;
                    }
                    busy_at = coarse_now();
                }
            }
            // The work's fds are edge-triggered: what woke this thread is
            // reported to no other, so it looks whatever else it has to do.
            drop(st);
            st = self.look(work, &mut found, &mut s);
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

    /// A fake ring: items pushed, a doorbell rung for each (the kernel's
    /// way); dropping the sender closes it.
    struct Chan {
        ring: Mutex<VecDeque<u32>>,
        closed: AtomicBool,
        bell: crate::sys::EventFd,
    }

    struct Tx(Arc<Chan>);

    impl Tx {
        fn send(&self, v: u32) -> Result<(), ()> {
            self.0.ring.lock().unwrap().push_back(v);
            self.0.bell.wake();
            Ok(())
        }
    }

    impl Drop for Tx {
        fn drop(&mut self) {
            self.0.closed.store(true, Ordering::SeqCst);
            self.0.bell.wake();
        }
    }

    /// A fake device: items arrive on the fake ring; running an item
    /// sleeps `service` (a backing device that takes time to answer) and
    /// records how many ran at once.
    struct Fake {
        chan: Arc<Chan>,
        service: Duration,
        now: AtomicUsize,
        peak: AtomicUsize,
        done: AtomicUsize,
        stop: AtomicBool,
        looks: AtomicUsize,
        /// Items read from the ring.
        read: AtomicUsize,
        /// Limit items below 100 to one at a time, the others to two.
        per_item: AtomicBool,
    }

    impl Fake {
        fn stop(&self) {
            self.stop.store(true, Ordering::SeqCst);
            self.chan.bell.wake();
        }
    }

    impl Work for Fake {
        type Item = u32;
        type Scratch = ();
        fn wake_fds(&self) -> Vec<RawFd> {
            vec![self.chan.bell.fd()]
        }
        fn look(&self, _: &Crew<Self>, woke: Ready, out: &mut Vec<u32>, _: &mut ()) -> Lead {
            self.looks.fetch_add(1, Ordering::SeqCst);
            if woke.bits & 1 != 0 {
                self.chan.bell.drain();
            }
            out.extend(self.chan.ring.lock().unwrap().drain(..));
            self.read.fetch_add(out.len(), Ordering::SeqCst);
            if self.stop.load(Ordering::SeqCst) || self.chan.closed.load(Ordering::SeqCst) {
                return Lead::Exit;
            }
            Lead::Read
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

    fn fake(service: Duration) -> (Fake, Tx) {
        let chan = Arc::new(Chan {
            ring: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            bell: crate::sys::EventFd::new().unwrap(),
        });
        (
            Fake {
                chan: chan.clone(),
                service,
                now: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
                looks: AtomicUsize::new(0),
                read: AtomicUsize::new(0),
                per_item: AtomicBool::new(false),
            },
            Tx(chan),
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
        crew.work().stop();
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
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// A lone item runs on the thread that read it, and one more thread
    /// waits meanwhile.
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
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Voluntary context switches of this process's threads named
    /// `name` (each sleep is one).
    fn sleeps_of(name: &str) -> u64 {
        let mut n = 0;
        for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            n += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        n
    }

    /// With many threads idle, one doorbell wakes one of them, which runs
    /// the item itself while one parked thread takes over the watch: three
    /// sleeps per item (the wait, the item's, the replacement's), not one
    /// per idle thread, and no thread hands work to another.
    #[test]
    fn one_doorbell_wakes_one_waiting_thread() {
        let (w, tx) = fake(Duration::from_millis(20));
        let crew = Crew::start("herd", w, 8, Budget::new(64)).unwrap();
        for i in 0..8 {
            tx.send(i).unwrap();
        }
        wait_until("8 done", || crew.work().done.load(Ordering::SeqCst) == 8);
        std::thread::sleep(Duration::from_millis(50));
        let threads = crew.threads();
        assert!(threads >= 8, "{threads} threads");
        let before = sleeps_of("herd");
        for i in 0..40 {
            tx.send(i).unwrap();
            wait_until("done", || {
                crew.work().done.load(Ordering::SeqCst) == 9 + i as usize
            });
        }
        // Let the last thread reach its wait.
        std::thread::sleep(Duration::from_millis(20));
        let per_item = (sleeps_of("herd") - before) as f64 / 40.0;
        assert!(
            per_item < 4.0,
            "{per_item:.1} sleeps per item with {threads} threads"
        );
        assert_eq!(crew.threads(), threads, "no thread started or retired");
        assert_eq!(crew.peak_running(), 8);
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Items already in the ring when the crew starts (a restarted
    /// daemon's) are read though no doorbell rings for them.
    #[test]
    fn the_first_thread_reads_what_the_ring_held_at_start() {
        let (w, tx) = fake(Duration::from_millis(1));
        w.chan.ring.lock().unwrap().extend([1, 2, 3]);
        let crew = Crew::start("t", w, 4, Budget::new(64)).unwrap();
        wait_until("3 done", || crew.work().done.load(Ordering::SeqCst) == 3);
        drop(tx);
        assert!(crew.wait_gone(Duration::from_secs(5)));
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
        slow.work().stop();
        fast.work().stop();
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
        crew.work().stop();
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
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Idle threads retire; the last one waiting stays.
    #[test]
    fn idle_threads_retire() {
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
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }

    /// Items queued when a look says Exit still run before the crew
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
        crew.work().stop();
        assert!(crew.wait_gone(Duration::from_secs(5)));
    }
}
