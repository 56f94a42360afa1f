//! One device as the threads of its crew share it: the ring, the backing
//! device and the doorbell. A thread the doorbell woke reads the ring
//! ([`Work::look`]); any thread runs a command and completes it into the
//! ring ([`Work::run`]).
//!
//! A command travels: uio event -> one waiting thread wakes and reads the
//! ring (`tcmu::ring`) -> it (or another for a second command) runs it (`passthrough`, `dma`, `sg::io`) -> the same
//! thread writes the completion into the ring, publishes `cmd_tail` and
//! rings the doorbell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::backing_state::{BackingSlot, BackingState, Reopen};
use super::dispatch::{Crew, Lead, Work};
use super::inline_meter::{large_read, InlineMeter, INLINE_SAMPLE};
use super::stall;
use crate::config::OptionDefaults;
use crate::dma::Scratch;
use crate::doorbell::Doorbell;
use crate::error::CmdError;
use crate::expiry::{Stamp, Timing};
use crate::passthrough::{self, completion};
use crate::scsi::direction::Direction;
use crate::scsi::policy::{Answer, Refused};
use crate::scsi::sense::{Outcome, SgResult};
use crate::sg::engine::Call;
use crate::sg::io::SgScratch;
use crate::stats::{DeviceStats, Record};
use crate::status::DeviceReport;
use crate::sys::{self, EventFd, Ready, TimerFd};
use crate::tcmu::ring::{CmdRequest, Completion, Entry, Ring};
use crate::tcmu::uio::UioDevice;

/// Spent requests kept per device for reuse (enough for a full queue).
const MAX_SPARE: usize = 256;

/// At most one line per this many ms about statuses that are not GOOD, at
/// info level (debug shows every one).
const STATUS_LOG_EVERY_MS: u64 = 10_000;

/// The opaque context the chunk walk hands to each SG_IO call, and what
/// the calls leave in it.
struct IoCtx<'a> {
    engine: &'a dyn crate::sg::engine::Engine,
    map: &'a crate::tcmu::mapping::Mapping,
    timing: Timing,
    /// The command's `seen_after` (see `crate::expiry`).
    seen_after: Option<Stamp>,
    guard: &'a stall::Guard,
    sg: &'a mut SgScratch,
    /// Set when a call found the backing device gone.
    gone: Option<&'static str>,
    /// Chunks sent.
    calls: u32,
    transport_error: bool,
    /// An SG_IO was refused: too late to start.
    refused: bool,
}

impl IoCtx<'_> {
    fn io(&mut self, io: &crate::dma::ChunkIo<'_>) -> Result<SgResult, CmdError> {
        let (guard, timing, seen_after) = (self.guard, self.timing, self.seen_after);
        let mut refused = false;
        // Every SG_IO, each chunk of a split command and each retry down
        // another path too, starts only while LIO cannot fail the command
        // back before it ends.
        let mut admit = || {
            guard
                .admit(seen_after, &timing, Stamp::now())
                .inspect_err(|_| refused = true)
        };
        let mut call = Call {
            map: self.map,
            timeout_ms: timing.sg_timeout.as_millis().min(u32::MAX as u128) as u32,
            scratch: self.sg,
            admit: &mut admit,
        };
        let sent = self.engine.send(io, &mut call);
        self.refused |= refused;
        let sent = sent?;
        self.calls += 1;
        self.transport_error |= sent.transport_error;
        if sent.gone.is_some() {
            self.gone = sent.gone;
        }
        Ok(sent.result)
    }
}

/// Bits of [`Work::look`]'s `woke`: the order of [`Device::wake_fds`].
const WOKE_DOORBELL: u64 = 1 << 0;
const WOKE_WAKE: u64 = 1 << 1;
const WOKE_TICK: u64 = 1 << 2;

/// How often the chores are done while the ring is paused (a stop or a
/// reconfiguration waiting for commands to finish).
const PAUSED_TICK: Duration = Duration::from_millis(100);

/// The shortest period of the chores' timer.
const MIN_TICK: Duration = Duration::from_millis(10);

/// The timer that wakes one waiting thread of the crew for the chores.
/// Its times are on the coarse clock (see `sys::coarse_now`): it is read
/// at every look.
struct Ticker {
    fd: TimerFd,
    /// The period, and when the timer fires next (about).
    at: Mutex<(Duration, Duration)>,
}

impl Ticker {
    fn new(period: Duration) -> std::io::Result<Ticker> {
        let period = period.max(MIN_TICK);
        let fd = TimerFd::new()?;
        fd.set(period, period)?;
        Ok(Ticker {
            fd,
            at: Mutex::new((period, sys::coarse_now() + period)),
        })
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.fd.fd()
    }

    /// Consumes the expiries so far.
    fn drain(&self) {
        self.fd.drain();
        let mut at = self.at.lock().unwrap();
        let (period, mut next) = *at;
        let now = sys::coarse_now();
        while next <= now {
            next += period;
        }
        at.1 = next;
    }

    /// Fires every `period` from now on, and no later than `within` from
    /// now; the timer is set only when that changes anything.
    fn keep(&self, period: Duration, within: Option<Duration>, label: &str) {
        let now = sys::coarse_now();
        let period = period.max(MIN_TICK);
        let first = within.map_or(period, |w| w.min(period));
        let mut at = self.at.lock().unwrap();
        if at.0 == period && at.1 <= now + first {
            return;
        }
        if let Err(e) = self.fd.set(first, period) {
            log::error!("{label}: timerfd_settime: {e}");
            return;
        }
        *at = (period, now + first);
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

/// Who a device is, for logs and reports.
pub struct Names {
    /// `uioN`.
    pub uio: String,
    /// `user_<hba>/<name>`.
    pub name: String,
    /// The config string.
    pub cfg: String,
}

pub struct Device {
    label: String,
    names: Mutex<Names>,
    /// The daemon's defaults for options a config string leaves unset.
    defaults: Arc<RwLock<OptionDefaults>>,
    uio: UioDevice,
    ring: Mutex<Ring>,
    /// Spent requests whose buffers the next ring read reuses.
    spare: Mutex<Vec<CmdRequest>>,
    /// Coalesces the uio writes that tell the kernel about completions.
    doorbell: Doorbell,
    backing: BackingSlot,
    /// Wakes a waiting thread (stop, reconfiguration, quiet, lost).
    wake: EventFd,
    /// Wakes a waiting thread when the chores are due.
    ticker: Ticker,
    /// Held by the thread doing the chores, and whether they are due.
    chores: Mutex<()>,
    chores_due: AtomicBool,
    /// A thread spins on the ring (`poll_spin`).
    spinning: AtomicBool,
    stop: AtomicBool,
    /// The crew's end was said.
    ended: AtomicBool,
    /// When a stop gives up on commands that do not finish.
    stop_deadline: Mutex<Option<Instant>>,
    /// No new ring entries are read while set (reconfiguration, stop).
    paused: AtomicBool,
    reconfig: Mutex<Option<String>>,
    /// After work, a thread keeps checking the ring this long before it
    /// sleeps.
    poll_spin: Duration,
    inline: InlineMeter,
    cpus: usize,
    /// LIO's cmd_time_out and the rule that keeps failed-back commands
    /// from running.
    guard: stall::Guard,
    /// When the crew attached to the ring, and whether a command has
    /// completed since (the first is logged: the time a restart costs).
    attached: Instant,
    served: AtomicBool,
    /// Rate limit of the info lines about statuses that are not GOOD (ms
    /// since `attached`), and how many it held back.
    status_log_next: AtomicU64,
    status_log_quiet: AtomicU64,
    /// The opcodes the policy or read-only mode refused at least once (one
    /// bit each): the first refusal of each is logged.
    refused_logged: [AtomicU64; 4],
    pub stats: DeviceStats,
}

impl Device {
    pub fn new(
        names: Names,
        uio: UioDevice,
        ring: Ring,
        backing: BackingState,
        poll_spin: Duration,
        defaults: Arc<RwLock<OptionDefaults>>,
        cmd_time_out: (std::path::PathBuf, Duration),
    ) -> std::io::Result<Device> {
        let label = format!("{} ({})", names.name, names.uio);
        let backing = BackingSlot::new(backing, &label, &names.name);
        let guard = stall::Guard::new(&label, cmd_time_out.0, cmd_time_out.1);
        Ok(Device {
            label,
            names: Mutex::new(names),
            defaults,
            uio,
            ring: Mutex::new(ring),
            spare: Mutex::new(Vec::new()),
            doorbell: Doorbell::default(),
            backing,
            wake: EventFd::new()?,
            ticker: Ticker::new(crate::expiry::MAX_SCAN_EVERY)?,
            chores: Mutex::new(()),
            chores_due: AtomicBool::new(true),
            spinning: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            stop_deadline: Mutex::new(None),
            paused: AtomicBool::new(false),
            reconfig: Mutex::new(None),
            poll_spin,
            inline: InlineMeter::default(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            guard,
            attached: Instant::now(),
            served: AtomicBool::new(false),
            status_log_next: AtomicU64::new(0),
            status_log_quiet: AtomicU64::new(0),
            refused_logged: Default::default(),
            stats: DeviceStats::default(),
        })
    }

    /// What `tcmu-sg status` shows of this device (without the interval
    /// counters, which the status server adds).
    pub fn report(&self, crew: &Crew<Self>) -> DeviceReport {
        let n = self.names.lock().unwrap();
        let mut r = DeviceReport {
            uio: n.uio.clone(),
            name: n.name.clone(),
            config: n.cfg.clone(),
            // An inline device: one at a time, large reads one per CPU.
            max_inflight: crew.cap().min(if self.inline.is_inline() {
                self.cpus
            } else {
                usize::MAX
            }),
            threads: crew.threads(),
            counters: self.stats.snapshot(),
            ..DeviceReport::default()
        };
        drop(n);
        self.backing.describe(&mut r);
        let t = self.timing_now();
        r.cmd_time_out_s = t.cmd_time_out.as_secs();
        r.sg_timeout_s = t.sg_timeout.as_secs_f64();
        r.stale_window_s = t.window().map(|w| w.as_secs_f64());
        r
    }

    /// `uioN`.
    pub fn report_uio(&self) -> String {
        self.names.lock().unwrap().uio.clone()
    }

    /// N of `uioN` (for ordering).
    pub fn uio_number(&self) -> u32 {
        self.names.lock().unwrap().uio[3..]
            .parse()
            .unwrap_or(u32::MAX)
    }

    /// Asks the crew to finish every command it read and end.
    pub fn request_stop(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
    }

    /// Asks the crew to reopen the backing device with `cfg` once no
    /// command runs.
    pub fn request_reconfig(&self, cfg: String) {
        self.names.lock().unwrap().cfg = cfg.clone();
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
        // Taken before the ring is looked at: see `Ring::poll_recycling`.
        let stamp = Stamp::now();
        let polled = ring.poll_recycling(stamp, &mut t.entries, &mut self.spare.lock().unwrap());
        if let Err(e) = polled {
            log::error!(
                "{}: ring unusable: {e}; stopping this device (needs action/reset_ring)",
                self.label
            );
            return false;
        }
        let label = &self.label;
        // A precise clock read costs a trap on some hosts: only for
        // commands found.
        let now = (!t.entries.is_empty()).then(Instant::now);
        for e in t.entries.drain(..) {
            match e {
                Entry::Cmd(mut cmd) => {
                    cmd.read_at = now;
                    out.push(cmd);
                }
                Entry::BadCmd { cmd_id, why } => {
                    log::warn!("{label}: cmd {cmd_id}: {why}");
                    let o = CmdError::Ring(why).outcome();
                    t.done.push(completion(cmd_id, Direction::None, 0, &o));
                    DeviceStats::count(&self.stats.done);
                    self.stats.record(&Record {
                        status: o.status,
                        sense_key: o.sense[2] & 0x0f,
                        ..Record::default()
                    });
                }
                Entry::Tmr { tmr_type, cmd_ids } => {
                    DeviceStats::count(&self.stats.tmr);
                    log::info!(
                        "{label}: task management {tmr_type:?} for commands {cmd_ids:?}; \
                         they complete as the backing device answers"
                    );
                }
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

    /// How long a stop waits for commands to finish: the SG_IO bound and
    /// a grace.
    pub fn stop_grace(&self) -> Duration {
        let t = self.timing_now();
        t.sg_bound + t.margin + Duration::from_secs(10)
    }

    /// The timing of a command with this opcode sent to `b` now.
    fn timing(&self, b: &crate::sg::backing::Backing, opcode: u8) -> Timing {
        Timing::queued(
            self.guard.cmd_time_out(),
            b.timeout_for(opcode),
            b.sg_floor(),
            b.queueing(),
        )
    }

    /// The timing of the current backing device's longest commands
    /// (without one, of a disk's on a block node).
    fn timing_now(&self) -> Timing {
        let (wanted, floor, queueing) = self.backing.sg_params().unwrap_or((
            crate::scsi::timeouts::DISK,
            crate::expiry::BLOCK_SG_FLOOR,
            Duration::ZERO,
        ));
        Timing::queued(self.guard.cmd_time_out(), wanted, floor, queueing)
    }

    /// Logs the device's timing: at attach, after a reconfiguration and
    /// when `cmd_time_out` changes; a warning when the SG_IO timeout had
    /// to be lowered, an error when no command can start.
    pub fn log_timing(&self) {
        let t = self.timing_now();
        log::info!("{}: {}", self.label, t.describe());
        // A transport's recovery wait is the usual culprit on a SAN disk.
        let transport = if t.queueing.is_zero() {
            String::new()
        } else {
            format!(
                " (of which {} s the backing transport may hold a command while it \
                 recovers a lost session: lower the iSCSI sessions' replacement_timeout, \
                 e.g. `iscsiadm -m node -o update -n node.session.timeo.replacement_timeout \
                 -v 5` and log in again, or multipath.conf's fast_io_fail_tmo, which \
                 multipathd applies to its paths' sessions)",
                t.queueing.as_secs()
            )
        };
        if t.window() == Some(Duration::ZERO) {
            log::error!(
                "{}: cmd_time_out {} s is too short for an SG_IO that may take {:.0} s{transport} \
                 and a {:.0} s margin: every command is refused BUSY; set cmd_time_out \
                 (before the LUN is exported) to at least {} s, or 0",
                self.label,
                t.cmd_time_out.as_secs(),
                t.sg_bound.as_secs_f64(),
                t.margin.as_secs_f64(),
                (t.sg_bound + t.margin).as_secs() + 1
            );
        } else if t.lowered {
            log::warn!(
                "{}: the SG_IO timeout asked for is more than cmd_time_out {} s allows{transport}; \
                 using {:.1} s (raise cmd_time_out before the LUN is exported to give \
                 the device more)",
                self.label,
                t.cmd_time_out.as_secs(),
                t.sg_timeout.as_secs_f64()
            );
        }
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
            let cap = self
                .backing
                .reconfigure(&cfg, &self.defaults.read().unwrap());
            self.inline.reset();
            crew.set_cap(cap);
            self.log_timing();
        });
        if applied.is_some() && !self.stop.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
        }
    }

    /// Counts a command the policy or read-only mode refused, and logs the
    /// first refusal of each opcode on this device.
    fn note_refused(&self, r: &Refused) {
        DeviceStats::count(if r.answer == Answer::WriteProtected {
            &self.stats.readonly_refused
        } else {
            &self.stats.policy_refused
        });
        let bit = 1u64 << (r.opcode % 64);
        let word = &self.refused_logged[r.opcode as usize / 64];
        if word.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            log::warn!(
                "{}: {r}; logged once per opcode, counted in tcmu-sg status",
                self.label
            );
        }
    }

    /// Logs a status that is not GOOD: every one at debug; at info at
    /// most one per `STATUS_LOG_EVERY`, with a count of those not shown.
    fn note_status(&self, cmd: &CmdRequest, o: &Outcome) {
        if o.is_good() {
            return;
        }
        let sense = &o.sense[..crate::scsi::sense::sense_len(&o.sense)];
        log::debug!(
            "{}: cmd {} opcode {:#04x} -> status {:#04x} sense {:02x?}",
            self.label,
            cmd.cmd_id,
            cmd.cdb[0],
            o.status,
            sense
        );
        if !log::log_enabled!(log::Level::Info) || log::log_enabled!(log::Level::Debug) {
            return;
        }
        let now = self.attached.elapsed().as_millis() as u64;
        let next = self.status_log_next.load(Ordering::Relaxed);
        if now < next
            || self
                .status_log_next
                .compare_exchange(
                    next,
                    now + STATUS_LOG_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            self.status_log_quiet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let quiet = self.status_log_quiet.swap(0, Ordering::Relaxed);
        log::info!(
            "{}: opcode {:#04x} -> status {:#04x} sense {:02x?}{}",
            self.label,
            cmd.cdb[0],
            o.status,
            sense,
            if quiet > 0 {
                format!(" ({quiet} more not GOOD since the last such line)")
            } else {
                String::new()
            }
        );
    }

    /// The device's chores, done by one looking thread at a time:
    /// `cmd_time_out` again (once a second) and the log line of a stall
    /// that has ended, a pending reconfiguration, a lost backing device
    /// looked for when due; and the timer set to wake a thread when the
    /// next of them is due.
    fn chores(&self, crew: &Crew<Self>) {
        let now = Stamp::now();
        if let Some((old, new)) = self.guard.refresh(now) {
            log::warn!(
                "{}: cmd_time_out changed from {} s to {} s; commands the ring held \
                 before now are refused",
                self.label,
                old.as_secs(),
                new.as_secs()
            );
            self.log_timing();
        }
        self.guard.tick(now, false);
        if self.reconfig.lock().unwrap().is_some() {
            self.reconfigure(crew);
        }
        // Looked for when due, busy or not.
        let reopen_in = match self.backing.reopen(&self.stats) {
            Reopen::Up(cap) => {
                // A unit that was never open has its own limits.
                crew.set_cap(cap);
                self.log_timing();
                None
            }
            Reopen::Wait(d) => Some(d + Duration::from_millis(1)),
            Reopen::Idle => None,
        };
        // An idle ring is looked at often enough that a command which
        // arrives while the daemon runs is never taken for a stale one.
        let mut period = self.timing_now().scan_every();
        if self.paused.load(Ordering::SeqCst) {
            period = period.min(PAUSED_TICK);
        }
        self.ticker.keep(period, reopen_in, &self.label);
    }

    /// The crew's end: lets the kernel see whatever completed (once,
    /// whichever thread says it).
    fn end(&self) -> Lead {
        if self.ended.swap(true, Ordering::SeqCst) {
            return Lead::Exit;
        }
        self.guard.tick(Stamp::now(), true);
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

    /// The doorbell, the device's own wake-ups and its timer.
    fn wake_fds(&self) -> Vec<std::os::fd::RawFd> {
        vec![self.uio.fd(), self.wake.fd(), self.ticker.fd()]
    }

    /// Consumes what woke the thread, does the device's chores (stop,
    /// reconfiguration, reopening a lost backing device, `cmd_time_out`)
    /// if no other thread is doing them, and reads the ring.
    fn look(
        &self,
        crew: &Crew<Self>,
        woke: Ready,
        out: &mut Vec<CmdRequest>,
        t: &mut ThreadScratch,
    ) -> Lead {
        // The doorbell is edge-triggered: each event wakes a thread once,
        // so it need not be read, and a command queued after the ring read
        // below raises a new one. An error on it is the device going away.
        if woke.errors & WOKE_DOORBELL != 0 {
            let e = match sys::read_u32(self.uio.fd()) {
                Err(e) => e.to_string(),
                Ok(_) => "poll error".to_string(),
            };
            log::info!("{}: uio device went away ({e})", self.label);
            return self.end();
        }
        let woke = woke.bits;
        if woke & WOKE_WAKE != 0 {
            self.wake.drain();
        }
        if woke & WOKE_TICK != 0 {
            self.ticker.drain();
        }
        // The chores are due when the timer or a wake-up says so (or a
        // thread looks on its own): a doorbell alone brings commands.
        if woke & (WOKE_WAKE | WOKE_TICK) != 0 || woke == 0 {
            self.chores_due.store(true, Ordering::SeqCst);
        }
        // One thread at a time does them; one that finds them taken leaves
        // them due, and the thread doing them looks again after.
        while self.chores_due.load(Ordering::SeqCst) {
            let Ok(chores) = self.chores.try_lock() else {
                break;
            };
            if !self.chores_due.swap(false, Ordering::SeqCst) {
                break;
            }
            if self.stop.load(Ordering::SeqCst) && self.may_end() {
                return self.end();
            }
            self.chores(crew);
            drop(chores);
        }
        if self.paused.load(Ordering::SeqCst) {
            return Lead::Read;
        }
        if !self.read_ring(out, t) {
            return self.end();
        }
        if out.is_empty()
            && !self.poll_spin.is_zero()
            && !self.spinning.swap(true, Ordering::SeqCst)
        {
            // Busy after recent work: check the ring a while without
            // sleeping (one thread of the crew at a time).
            let until = Instant::now() + self.poll_spin;
            while Instant::now() < until && !self.ring.lock().unwrap().has_new() {
                std::hint::spin_loop();
            }
            self.spinning.store(false, Ordering::SeqCst);
            if !self.paused.load(Ordering::SeqCst) && !self.read_ring(out, t) {
                return self.end();
            }
        }
        Lead::Read
    }

    /// With `--poll-us`, a thread that ran a command looks again before it
    /// sleeps.
    fn look_after_run(&self) -> bool {
        !self.poll_spin.is_zero()
    }

    /// Runs one command on the current backing device and completes it.
    fn run(&self, cmd: CmdRequest, t: &mut ThreadScratch) {
        let running = self.stats.start();
        let mut rec = Record::default();
        let c = match self.backing.current() {
            Ok(b) => {
                let total = cmd.data_len();
                t.ran = t.ran.wrapping_add(1);
                let slept_before = t
                    .ran
                    .is_multiple_of(INLINE_SAMPLE)
                    .then(crate::sys::voluntary_switches);
                let mut ctx = IoCtx {
                    engine: b.engine.as_ref(),
                    map: &self.uio.map,
                    timing: self.timing(&b, cmd.cdb[0]),
                    seen_after: cmd.seen_after,
                    guard: &self.guard,
                    sg: &mut t.sg,
                    gone: None,
                    calls: 0,
                    transport_error: false,
                    refused: false,
                };
                let (dir, o, refused) =
                    passthrough::execute(&cmd, &b.info.params, &mut t.dma, &mut ctx, IoCtx::io);
                if let Some(r) = refused {
                    self.note_refused(&r);
                }
                passthrough::adjust_response(&cmd, &b.info.params, &o, &self.uio.map);
                if let Some(why) = ctx.gone {
                    if self.backing.lost(&b, why, &self.stats) {
                        // The chores' timer follows the back-off.
                        self.wake.wake();
                    }
                }
                if let Some(before) = slept_before {
                    self.inline.sample(
                        crate::sys::voluntary_switches() != before,
                        &self.label,
                        self.cpus,
                    );
                }
                let moved = total - o.residual.min(total);
                match dir {
                    Direction::FromDevice => rec.read_bytes = moved,
                    Direction::ToDevice => rec.written_bytes = moved,
                    _ => {}
                }
                rec.chunks = ctx.calls;
                rec.transport_error = ctx.transport_error;
                if ctx.refused {
                    DeviceStats::count(&self.stats.stale_refused);
                }
                self.note_status(&cmd, &o);
                completion(cmd.cmd_id, dir, total, &o)
            }
            Err(e) => {
                let o = e.outcome();
                self.note_status(&cmd, &o);
                completion(cmd.cmd_id, Direction::None, 0, &o)
            }
        };
        rec.status = c.scsi_status;
        rec.sense_key = c.sense[2] & 0x0f;
        t.done.push(c);
        self.complete(&mut t.done);
        rec.latency = cmd.read_at.map_or(Duration::ZERO, |at| at.elapsed());
        self.stats.record(&rec);
        drop(running);
        if !self.served.load(Ordering::Relaxed) && !self.served.swap(true, Ordering::Relaxed) {
            log::info!(
                "{}: first command completed {} ms after attaching to the ring",
                self.label,
                self.attached.elapsed().as_millis()
            );
        }
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < MAX_SPARE {
            spare.push(cmd);
        }
    }

    fn limit(&self, next: &CmdRequest) -> usize {
        if !self.inline.is_inline() {
            usize::MAX
        } else if large_read(next) {
            self.cpus
        } else {
            1
        }
    }

    /// The last running command finished: a stop or reconfiguration may
    /// be waiting for exactly that.
    fn quiet(&self) {
        if self.paused.load(Ordering::SeqCst) {
            self.wake.wake();
        }
    }
}
