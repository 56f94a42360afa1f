//! One device as the threads of its crew share it: the ring, the backing
//! device and the doorbell. The crew's leader reads the ring
//! ([`Work::lead`]); any thread runs a command and completes it into the
//! ring ([`Work::run`]).
//!
//! A command travels: uio event -> the leader reads the ring (`tcmu::ring`)
//! -> a crew thread runs it (`passthrough`, `dma`, `sg::io`) -> the same
//! thread writes the completion into the ring, publishes `cmd_tail` and
//! rings the doorbell.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::dispatch::{Crew, Lead, Work};
use crate::config::OptionDefaults;
use crate::dma::Scratch;
use crate::doorbell::Doorbell;
use crate::error::CmdError;
use crate::passthrough::{self, completion};
use crate::scsi::cdb::{RwCdb, RwKind};
use crate::scsi::direction::Direction;
use crate::scsi::sense::{Outcome, SgResult};
use crate::sg::backing::{self, Backing, Identity};
use crate::sg::io::{sg_io, SgScratch};
use crate::stats::{DeviceStats, Record};
use crate::status::DeviceReport;
use crate::sys::{self, EventFd};
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
    fd: i32,
    map: &'a crate::tcmu::mapping::Mapping,
    timeout_ms: u32,
    sg: &'a mut SgScratch,
    /// Set when a call found the backing device gone.
    gone: Option<&'static str>,
    calls: u32,
    transport_error: bool,
}

impl IoCtx<'_> {
    fn io(&mut self, io: &crate::dma::ChunkIo<'_>) -> SgResult {
        let r = sg_io(self.fd, self.map, io, self.timeout_ms, self.sg);
        self.calls += 1;
        if r.errno != 0 || r.host_status != 0 || r.driver_status & 0x0f != 0 {
            self.transport_error = true;
        }
        if let Some(why) = r.device_gone() {
            self.gone = Some(why);
        }
        r
    }
}

/// The backing device of a device, or why it has none.
pub enum BackingState {
    /// Serving through this open device.
    Up(Arc<Backing>),
    /// The config cannot be served (a bad string, no such device): every
    /// command gets NOT READY 04/03 until the config changes.
    Bad(String),
    /// It went away while serving; its path is opened again with back-off,
    /// and commands get NOT READY 05/00 meanwhile.
    Lost(Box<Lost>),
}

/// What is kept of a lost backing device: enough to open its path again
/// and check what is found there, but not its file, so the kernel can
/// give the returning disk its old name.
pub struct Lost {
    cfg: crate::config::DevConfig,
    identity: Option<Identity>,
    node: std::path::PathBuf,
    vendor_model: String,
    timeout_ms: u32,
    max_inflight: usize,
    why: String,
    since: Instant,
    next_try: Instant,
    backoff: Duration,
    /// The last other unit found at the path (logged once).
    refused: Option<Identity>,
}

/// Back-off between attempts to open a lost path again: from the first
/// value, doubling, to the second (a path that returns is served again
/// within that, plus the kernel's own scan).
const REOPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(2));

/// Opens the backing device of a config string (options it leaves unset
/// from `defaults`), or says why not.
pub fn open_backing(cfg: &str, defaults: &OptionDefaults) -> BackingState {
    let opened = crate::config::parse_with(cfg, defaults)
        .map_err(|e| e.to_string())
        .and_then(|c| backing::open(&c).map_err(|e| e.to_string()));
    match opened {
        Ok(b) => BackingState::Up(Arc::new(b)),
        Err(e) => BackingState::Bad(e),
    }
}

/// How many commands may run at once on a device with this backing.
pub fn cap_for(b: &BackingState) -> usize {
    match b {
        BackingState::Up(b) => b.max_inflight(),
        BackingState::Lost(l) => l.max_inflight,
        // Every command is answered NOT READY at once: one thread does.
        BackingState::Bad(_) => 1,
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

/// On an inline device, reads of this size or more run one per CPU (see
/// [`InlineMeter`]).
const LARGE_READ: u64 = 512 << 10;

/// What identifies a backing unit in reports: its name (see
/// [`Identity::name`]), then vendor and model.
fn identity_text(id: Option<&Identity>, vendor_model: &str) -> String {
    match id {
        Some(i) => format!("{} ({vendor_model})", i.name()),
        None => vendor_model.to_string(),
    }
}

/// A READ of `LARGE_READ` bytes or more.
fn large_read(cmd: &CmdRequest) -> bool {
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
    backing: Mutex<BackingState>,
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
    /// When the crew attached to the ring, and whether a command has
    /// completed since (the first is logged: the time a restart costs).
    attached: Instant,
    served: AtomicBool,
    /// Rate limit of the info lines about statuses that are not GOOD (ms
    /// since `attached`), and how many it held back.
    status_log_next: AtomicU64,
    status_log_quiet: AtomicU64,
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
    ) -> std::io::Result<Device> {
        Ok(Device {
            label: format!("{} ({})", names.name, names.uio),
            names: Mutex::new(names),
            defaults,
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
            attached: Instant::now(),
            served: AtomicBool::new(false),
            status_log_next: AtomicU64::new(0),
            status_log_quiet: AtomicU64::new(0),
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
        let describe = |b: &Backing, r: &mut DeviceReport| {
            r.backing = b.cfg.path.display().to_string();
            r.node = b.info.node.display().to_string();
            r.identity = identity_text(
                b.identity.as_ref(),
                &format!("{} {}", b.info.vendor, b.info.model),
            );
        };
        match &*self.backing.lock().unwrap() {
            BackingState::Up(b) => {
                describe(b, &mut r);
                r.state = "serving".into();
            }
            BackingState::Bad(why) => {
                r.state = "not ready".into();
                r.state_detail = why.clone();
            }
            BackingState::Lost(l) => {
                r.backing = l.cfg.path.display().to_string();
                r.node = l.node.display().to_string();
                r.identity = identity_text(l.identity.as_ref(), &l.vendor_model);
                r.state = "re-opening".into();
                r.state_detail = format!(
                    "lost {:.0} s ago: {}",
                    l.since.elapsed().as_secs_f64(),
                    l.why
                );
            }
        }
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

    /// Asks the leader to reopen the backing device with `cfg` once no
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
        let polled = ring.poll_recycling(&mut t.entries, &mut self.spare.lock().unwrap());
        if let Err(e) = polled {
            log::error!(
                "{}: ring unusable: {e}; stopping this device (needs action/reset_ring)",
                self.label
            );
            return false;
        }
        let label = &self.label;
        let now = Instant::now();
        for e in t.entries.drain(..) {
            match e {
                Entry::Cmd(mut cmd) => {
                    cmd.read_at = Some(now);
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

    /// How long a stop waits for commands to finish: the SG_IO timeout
    /// and a grace.
    pub fn stop_grace(&self) -> Duration {
        let tmo = match &*self.backing.lock().unwrap() {
            BackingState::Up(b) => b.timeout_ms,
            BackingState::Lost(l) => l.timeout_ms,
            BackingState::Bad(_) => 0,
        };
        Duration::from_millis(tmo as u64) + Duration::from_secs(10)
    }

    /// The backing device to run a command on, or the error to answer.
    fn current(&self) -> Result<Arc<Backing>, CmdError> {
        match &*self.backing.lock().unwrap() {
            BackingState::Up(b) => Ok(b.clone()),
            BackingState::Bad(why) => Err(CmdError::NotReady(why.clone())),
            BackingState::Lost(l) => Err(CmdError::Lost(l.why.clone())),
        }
    }

    /// A command found `b` gone: unless it was replaced meanwhile, the
    /// device answers NOT READY and its path is opened again.
    fn lost(&self, b: &Arc<Backing>, why: &str) {
        let mut st = self.backing.lock().unwrap();
        if !matches!(&*st, BackingState::Up(cur) if Arc::ptr_eq(cur, b)) {
            return;
        }
        log::error!(
            "{}: backing device {} lost ({why}); answering NOT READY and opening {} \
             again every {:?} or less",
            self.label,
            b.info.node.display(),
            b.cfg.path.display(),
            REOPEN_BACKOFF.1
        );
        let now = Instant::now();
        *st = BackingState::Lost(Box::new(Lost {
            cfg: b.cfg.clone(),
            identity: b.identity.clone(),
            node: b.info.node.clone(),
            vendor_model: format!("{} {}", b.info.vendor, b.info.model),
            timeout_ms: b.timeout_ms,
            max_inflight: b.max_inflight(),
            why: format!("{} {why}", b.info.node.display()),
            since: now,
            next_try: now + REOPEN_BACKOFF.0,
            backoff: REOPEN_BACKOFF.0,
            refused: None,
        }));
        DeviceStats::count(&self.stats.lost);
        drop(st);
        // The leader's poll timeout follows the back-off.
        self.wake.wake();
    }

    /// For a lost backing device: opens its path again when due, and
    /// serves it if it is the same logical unit. Returns how long until
    /// the next attempt (None: nothing to do).
    fn reopen(&self) -> Option<Duration> {
        let (cfg, identity, due) = match &*self.backing.lock().unwrap() {
            BackingState::Lost(l) => (l.cfg.clone(), l.identity.clone(), l.next_try),
            _ => return None,
        };
        let now = Instant::now();
        if now < due {
            return Some(due - now);
        }
        // Opened without the lock: probing and INQUIRY take a while.
        let opened = backing::open(&cfg);
        let mut st = self.backing.lock().unwrap();
        let BackingState::Lost(l) = &mut *st else {
            return None; // reconfigured meanwhile
        };
        match opened {
            Ok(b) if b.identity == identity => {
                log::info!(
                    "{}: backing device back after {:.1} s: {}",
                    self.label,
                    l.since.elapsed().as_secs_f64(),
                    b.info.describe()
                );
                if b.identity.is_none() {
                    log::warn!(
                        "{}: it has no identity to check (no VPD 0x83 or 0x80)",
                        self.label
                    );
                }
                DeviceStats::count(&self.stats.reopened);
                *st = BackingState::Up(Arc::new(b));
                return None;
            }
            Ok(b) => {
                if l.refused != b.identity {
                    log::error!(
                        "{}: {} is now another logical unit ({}), not the one served ({}); \
                         refusing it",
                        self.label,
                        cfg.path.display(),
                        b.identity
                            .as_ref()
                            .map_or("no identity".into(), |i| i.to_string()),
                        identity
                            .as_ref()
                            .map_or("no identity".into(), |i| i.to_string()),
                    );
                    l.refused = b.identity.clone();
                }
            }
            Err(e) => log::debug!("{}: {} not back: {e}", self.label, cfg.path.display()),
        }
        l.backoff = (l.backoff * 2).min(REOPEN_BACKOFF.1);
        l.next_try = Instant::now() + l.backoff;
        Some(l.backoff)
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
            *b = BackingState::Bad("reconfiguring".into());
            *b = open_backing(&cfg, &self.defaults.read().unwrap());
            self.inline.reset();
            crew.set_cap(cap_for(&b));
            match &*b {
                BackingState::Up(nb) => log::info!(
                    "{}: reconfigured: {}, up to {} commands at once",
                    self.label,
                    nb.info.describe(),
                    crew.cap()
                ),
                BackingState::Bad(e) => log::error!(
                    "{}: reconfigured with a bad config ({e}); answering NOT READY",
                    self.label
                ),
                BackingState::Lost(_) => {}
            }
        });
        if applied.is_some() && !self.stop.load(Ordering::SeqCst) {
            self.paused.store(false, Ordering::SeqCst);
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

    /// One sample of whether an SG_IO slept (see `InlineMeter`).
    fn measured(&self, slept: bool) {
        let Some(now) = self.inline.record(slept) else {
            return;
        };
        // The first verdict at info; a device that flips between the two
        // later does so at debug.
        let level = if self.inline.flips.fetch_add(1, Ordering::Relaxed) == 0 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        if now {
            log::log!(
                level,
                "{}: the backing device answers inline (SG_IO does not sleep): \
                 one command at a time, reads of {} KiB or more one per CPU ({})",
                self.label,
                LARGE_READ >> 10,
                self.cpus
            );
        } else {
            log::log!(
                level,
                "{}: the backing device takes time to answer: its full queue depth in flight",
                self.label
            );
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
            // A lost backing device is looked for again when due, busy or
            // not (under load the leader rarely reaches its poll).
            let reopen_in = self.reopen();
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
            let mut tmo = if self.paused.load(Ordering::SeqCst) {
                100
            } else {
                1000
            };
            if let Some(next) = reopen_in {
                tmo = tmo.min(next.as_millis() as i32 + 1);
            }
            if let Err(e) = sys::poll_in(&[self.uio.fd(), self.wake.fd()], tmo, &mut revents) {
                log::error!("{}: poll: {e}", self.label);
                return self.end();
            }
        }
    }

    /// Runs one command on the current backing device and completes it.
    fn run(&self, cmd: CmdRequest, t: &mut ThreadScratch) {
        let running = self.stats.start();
        let mut rec = Record::default();
        let c = match self.current() {
            Ok(b) => {
                let total = cmd.data_len();
                t.ran = t.ran.wrapping_add(1);
                let slept_before = t
                    .ran
                    .is_multiple_of(INLINE_SAMPLE)
                    .then(crate::sys::voluntary_switches);
                let mut ctx = IoCtx {
                    fd: b.fd(),
                    map: &self.uio.map,
                    timeout_ms: b.timeout_ms,
                    sg: &mut t.sg,
                    gone: None,
                    calls: 0,
                    transport_error: false,
                };
                let (dir, o) =
                    passthrough::execute(&cmd, &b.info.params, &mut t.dma, &mut ctx, IoCtx::io);
                if let Some(why) = ctx.gone {
                    self.lost(&b, why);
                }
                if let Some(before) = slept_before {
                    self.measured(crate::sys::voluntary_switches() != before);
                }
                let moved = total - o.residual.min(total);
                match dir {
                    Direction::FromDevice => rec.read_bytes = moved,
                    Direction::ToDevice => rec.written_bytes = moved,
                    _ => {}
                }
                rec.chunks = ctx.calls;
                rec.transport_error = ctx.transport_error;
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
