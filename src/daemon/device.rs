//! One device as the threads of its crew share it: the ring, the backing
//! device and the doorbell. The crew's leader reads the ring
//! ([`Work::lead`]); any thread runs a command and completes it into the
//! ring ([`Work::run`]).
//!
//! A command travels: uio event -> the leader reads the ring (`tcmu::ring`)
//! -> a crew thread runs it (`passthrough`, `dma`, `sg::io`) -> the same
//! thread writes the completion into the ring, publishes `cmd_tail` and
//! rings the doorbell.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dispatch::{Crew, Lead, Work};
use crate::dma::Scratch;
use crate::doorbell::Doorbell;
use crate::error::CmdError;
use crate::passthrough::{self, completion};
use crate::scsi::direction::Direction;
use crate::sg::backing::{self, Backing};
use crate::sg::io::{sg_io, SgScratch};
use crate::stats::DeviceStats;
use crate::sys::{self, EventFd};
use crate::tcmu::ring::{CmdRequest, Completion, Entry, Ring};
use crate::tcmu::uio::UioDevice;

/// Spent requests kept per device for reuse (enough for a full queue).
const MAX_SPARE: usize = 256;

/// The backing device of a device, or why it has none.
pub type BackingSlot = Result<Arc<Backing>, String>;

/// Opens the backing device of a config string, or says why not.
pub fn open_backing(cfg: &str) -> BackingSlot {
    let c = crate::config::parse(cfg).map_err(|e| e.to_string())?;
    let b = backing::open(&c).map_err(|e| e.to_string())?;
    Ok(Arc::new(b))
}

/// How many commands may run at once on a device with this backing.
pub fn cap_for(b: &BackingSlot) -> usize {
    match b {
        Ok(b) => b.max_inflight(),
        // Every command is answered NOT READY at once: one thread does.
        Err(_) => 1,
    }
}

/// Per-thread buffers reused from command to command.
#[derive(Default)]
pub struct ThreadScratch {
    dma: Scratch,
    sg: SgScratch,
    entries: Vec<Entry>,
    done: Vec<Completion>,
    /// Commands this thread ran (for sampling).
    ran: u32,
}

/// Every this many commands a thread checks whether its SG_IO slept.
const INLINE_SAMPLE: u32 = 4;

/// Whether the backing device answers in the submitter's context: its
/// SG_IO returns without the thread ever sleeping (scsi_debug with
/// `delay=0`, some RAM-backed devices). Such a device's work is CPU work,
/// so more commands in flight than CPUs only make them compete (with each
/// other and with the initiator's copies into the data area): measured,
/// 1 MiB and 64 KiB writes at QD4 ran 30% slower at four in flight than at
/// one. So an inline device runs at most one command per CPU (measured on
/// 2 CPUs at QD4: 1 MiB writes 370 IOPS at one in flight, 300 at two, 240
/// at four; 1 MiB reads 230, 340, 300; 4k random writes at QD16 best at
/// two). A device whose SG_IO sleeps keeps its full queue depth.
#[derive(Debug, Default)]
struct InlineMeter {
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
    fn record(&self, slept: bool) -> Option<bool> {
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

    fn is_inline(&self) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    /// Forgets what was measured (a new backing device).
    fn reset(&self) {
        self.score.store(0, Ordering::Relaxed);
        self.inline.store(false, Ordering::Relaxed);
    }
}

pub struct Device {
    label: String,
    uio: UioDevice,
    ring: Mutex<Ring>,
    /// Spent requests whose buffers the next ring read reuses.
    spare: Mutex<Vec<CmdRequest>>,
    /// Coalesces the uio writes that tell the kernel about completions.
    doorbell: Doorbell,
    backing: Mutex<BackingSlot>,
    /// Wakes the leader from its poll (stop, reconfiguration, quiet).
    wake: EventFd,
    stop: AtomicBool,
    /// When a stop gives up on commands that do not finish.
    stop_deadline: Mutex<Option<Instant>>,
    /// No new ring entries are read while set (reconfiguration, stop).
    paused: AtomicBool,
    reconfig: Mutex<Option<String>>,
    /// After work, the leader keeps checking the ring this long before it
    /// sleeps in poll().
    poll_spin: Duration,
    inline: InlineMeter,
    cpus: usize,
    pub stats: DeviceStats,
}

impl Device {
    pub fn new(
        label: String,
        uio: UioDevice,
        ring: Ring,
        backing: BackingSlot,
        poll_spin: Duration,
    ) -> std::io::Result<Device> {
        Ok(Device {
            label,
            uio,
            ring: Mutex::new(ring),
            spare: Mutex::new(Vec::new()),
            doorbell: Doorbell::default(),
            backing: Mutex::new(backing),
            wake: EventFd::new()?,
            stop: AtomicBool::new(false),
            stop_deadline: Mutex::new(None),
            paused: AtomicBool::new(false),
            reconfig: Mutex::new(None),
            poll_spin,
            inline: InlineMeter::default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stats: DeviceStats::default(),
        })
    }

    /// Asks the crew to finish every command it read and end.
    pub fn request_stop(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// Asks the leader to reopen the backing device with `cfg` once no
    /// command runs.
    pub fn request_reconfig(&self, cfg: String) {
        *self.reconfig.lock().unwrap() = Some(cfg);
        self.paused.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// Publishes the completions written to the ring (stores `cmd_tail`).
    /// The caller then drops the ring lock and calls `kick`. Returns
    /// whether anything was published.
    fn publish(&self, ring: &mut Ring) -> bool {
        let moved = ring.flush();
        if moved {
            self.doorbell.published();
        }
        moved
    }

    /// Tells the kernel about published completions with a uio write,
    /// made outside the ring lock because the kernel does its completion
    /// work (for data-in, the copy out of the data area) inside it; writes
    /// from several threads coalesce (see `doorbell`).
    fn kick(&self) {
        self.doorbell.ring(|| {
            if let Err(e) = self.uio.kick() {
                log::error!("{}: uio write: {e}", self.label);
            }
        });
    }

    /// Writes completions into the ring (not yet published).
    fn write_completions(&self, ring: &mut Ring, cs: &mut Vec<Completion>) {
        for c in cs.drain(..) {
            if let Err(e) = ring.complete(c) {
                log::error!("{}: {e}", self.label);
            }
        }
    }

    fn complete(&self, cs: &mut Vec<Completion>) {
        if cs.is_empty() {
            return;
        }
        let mut ring = self.ring.lock().unwrap();
        self.write_completions(&mut ring, cs);
        self.publish(&mut ring);
        drop(ring);
        self.kick();
    }

    /// Reads new ring entries: commands into `out`; entries that need no
    /// I/O are completed at once. Returns false if the ring is unusable.
    fn read_ring(&self, out: &mut Vec<CmdRequest>, t: &mut ThreadScratch) -> bool {
        let mut ring = self.ring.lock().unwrap();
        t.entries.clear();
        let polled = ring.poll_recycling(&mut t.entries, &mut self.spare.lock().unwrap());
        if let Err(e) = polled {
            log::error!(
                "{}: ring unusable: {e}; stopping this device (needs action/reset_ring)",
                self.label
            );
            return false;
        }
        let label = &self.label;
        for e in t.entries.drain(..) {
            match e {
                Entry::Cmd(cmd) => out.push(cmd),
                Entry::BadCmd { cmd_id, why } => {
                    log::warn!("{label}: cmd {cmd_id}: {why}");
                    let o = CmdError::Ring(why).outcome();
                    t.done.push(completion(cmd_id, Direction::None, 0, &o));
                }
                Entry::Tmr { tmr_type, cmd_ids } => log::info!(
                    "{label}: task management {tmr_type:?} for commands {cmd_ids:?}; \
                     they complete as the backing device answers"
                ),
                Entry::Unknown { cmd_id, op } => {
                    log::warn!("{label}: entry opcode {op} unknown; completing with UNKNOWN_OP");
                    let mut c = Completion::good(cmd_id);
                    c.unknown_op = true;
                    t.done.push(c);
                }
            }
        }
        self.write_completions(&mut ring, &mut t.done);
        let told = self.publish(&mut ring);
        drop(ring);
        if told {
            self.kick();
        }
        true
    }

    /// How long a stop waits for commands to finish: the SG_IO timeout
    /// and a grace.
    pub fn stop_grace(&self) -> Duration {
        let tmo = self
            .backing
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |b| b.timeout_ms);
        Duration::from_millis(tmo as u64) + Duration::from_secs(10)
    }

    /// While stopping: true once every command read has completed (or the
    /// deadline passed), when the crew may end.
    fn may_end(&self) -> bool {
        let deadline = *self
            .stop_deadline
            .lock()
            .unwrap()
            .get_or_insert_with(|| Instant::now() + self.stop_grace());
        let left = self.ring.lock().unwrap().outstanding();
        if left == 0 {
            return true;
        }
        if Instant::now() > deadline {
            log::warn!(
                "{}: stopping with {left} commands unfinished; the kernel times them out",
                self.label
            );
            return true;
        }
        false
    }

    /// Reopens the backing device for a pending reconfiguration, once no
    /// command runs (the old device is closed first: it was opened
    /// exclusively).
    fn reconfigure(&self, crew: &Crew<Self>) {
        let applied = crew.quiesced(|| {
            let Some(cfg) = self.reconfig.lock().unwrap().take() else {
                return;
            };
            let mut b = self.backing.lock().unwrap();
            *b = Err("reconfiguring".into());
            *b = open_backing(&cfg);
            self.inline.reset();
            crew.set_cap(cap_for(&b));
            match &*b {
                Ok(nb) => log::info!(
                    "{}: reconfigured: {}, up to {} commands at once",
                    self.label,
                    nb.info.describe(),
                    crew.cap()
                ),
                Err(e) => log::error!(
                    "{}: reconfigured with a bad config ({e}); answering NOT READY",
                    self.label
                ),
            }
        });
        if applied.is_some() && !self.stop.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// The leader's end: lets the kernel see whatever completed.
    fn end(&self) -> Lead {
        self.publish(&mut self.ring.lock().unwrap());
        self.kick();
        Lead::Exit
    }
}

impl Work for Device {
    type Item = CmdRequest;
    type Scratch = ThreadScratch;

    fn label(&self) -> &str {
        &self.label
    }

    /// Waits for the kernel's doorbell and reads the ring; carries out
    /// stop and reconfiguration on the way.
    fn lead(&self, crew: &Crew<Self>, out: &mut Vec<CmdRequest>, t: &mut ThreadScratch) -> Lead {
        let spin_until = (!self.poll_spin.is_zero()).then(|| Instant::now() + self.poll_spin);
        let mut revents = [0i16; 2];
        loop {
            if self.stop.load(Ordering::SeqCst) && self.may_end() {
                return self.end();
            }
            if self.reconfig.lock().unwrap().is_some() {
                self.reconfigure(crew);
            }
            if revents[0] != 0 {
                // Consume the event before reading the ring: a command
                // queued after the read raises a new one.
                if let Err(e) = sys::read_u32(self.uio.fd()) {
                    log::info!("{}: uio device went away ({e})", self.label);
                    return self.end();
                }
            }
            if revents[1] != 0 {
                self.wake.drain();
            }
            if !self.paused.load(Ordering::SeqCst) {
                if !self.read_ring(out, t) {
                    return self.end();
                }
                if !out.is_empty() {
                    return Lead::Items;
                }
            }
            if let Some(u) = spin_until.filter(|u| Instant::now() < *u) {
                // Busy after recent work: check the ring without sleeping.
                revents = [0; 2];
                while Instant::now() < u && !self.ring.lock().unwrap().has_new() {
                    std::hint::spin_loop();
                }
                if !self.paused.load(Ordering::SeqCst) {
                    continue;
                }
            }
            let tmo = if self.paused.load(Ordering::SeqCst) {
                100
            } else {
                1000
            };
            if let Err(e) = sys::poll_in(&[self.uio.fd(), self.wake.fd()], tmo, &mut revents) {
                log::error!("{}: poll: {e}", self.label);
                return self.end();
            }
        }
    }

    /// Runs one command on the current backing device and completes it.
    fn run(&self, cmd: CmdRequest, t: &mut ThreadScratch) {
        let running = self.stats.start();
        let backing = self.backing.lock().unwrap().clone();
        let c = match backing {
            Ok(b) => {
                let total = cmd.data_len();
                t.ran = t.ran.wrapping_add(1);
                let slept_before = t
                    .ran
                    .is_multiple_of(INLINE_SAMPLE)
                    .then(crate::sys::voluntary_switches);
                let mut ctx = (b.fd(), &*self.uio.map, b.timeout_ms, &mut t.sg);
                let (dir, o) = passthrough::execute(
                    &cmd,
                    &b.info.params,
                    &mut t.dma,
                    &mut ctx,
                    |(fd, map, tmo, sg), io| sg_io(*fd, map, io, *tmo, sg),
                );
                if let Some(before) = slept_before {
                    let slept = crate::sys::voluntary_switches() != before;
                    if let Some(now) = self.inline.record(slept) {
                        // The first verdict at info; a device that flips
                        // between the two later does so at debug.
                        let level = if self.inline.flips.fetch_add(1, Ordering::Relaxed) == 0 {
                            log::Level::Info
                        } else {
                            log::Level::Debug
                        };
                        if now {
                            log::log!(
                                level,
                                "{}: the backing device answers inline (SG_IO does not \
                                 sleep): at most {} commands at once, one per CPU",
                                self.label,
                                self.cpus
                            );
                        } else {
                            log::log!(
                                level,
                                "{}: the backing device takes time to answer: \
                                 its full queue depth in flight",
                                self.label
                            );
                        }
                    }
                }
                if !o.is_good() {
                    log::debug!(
                        "{}: cmd {} opcode {:#04x} -> status {:#04x} sense {:02x?}",
                        self.label,
                        cmd.cmd_id,
                        cmd.cdb[0],
                        o.status,
                        &o.sense[..crate::scsi::sense::sense_len(&o.sense)]
                    );
                }
                completion(cmd.cmd_id, dir, total, &o)
            }
            Err(why) => {
                let o = CmdError::NotReady(why).outcome();
                completion(cmd.cmd_id, Direction::None, 0, &o)
            }
        };
        t.done.push(c);
        self.complete(&mut t.done);
        drop(running);
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < MAX_SPARE {
            spare.push(cmd);
        }
    }

    fn limit(&self) -> usize {
        if self.inline.is_inline() {
            self.cpus
        } else {
            usize::MAX
        }
    }

    /// The last running command finished: a paused leader may be waiting
    /// for exactly that.
    fn quiet(&self) {
        if self.paused.load(Ordering::SeqCst) {
            self.wake.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
