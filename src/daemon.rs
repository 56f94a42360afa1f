//! The daemon: a registry of devices kept in step with sysfs and the
//! TCM-USER netlink events, one event-loop thread per device, and a shared
//! pool of SG_IO workers.
//!
//! A command travels: uio event -> the device thread reads the ring into the
//! device's queue -> the device thread (for one command) or pool workers
//! (for the others) run it with SG_IO -> the same thread writes the
//! completion into the ring, publishes `cmd_tail` and rings the doorbell.
//! A worker whose queue runs dry reads the ring itself before giving its
//! token back, so a busy device keeps its workers without thread hops.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config;
use crate::dma::Scratch;
use crate::doorbell::Doorbell;
use crate::error::CmdError;
use crate::passthrough::{self, completion};
use crate::scsi::cdb::op;
use crate::scsi::direction::Direction;
use crate::sg::backing::{self, Backing};
use crate::sg::io::{sg_io, SgScratch};
use crate::sys::{self, EventFd};
use crate::tcmu::netlink;
use crate::tcmu::ring::{CmdRequest, Completion, Entry, Ring};
use crate::tcmu::uio::{self, UioDev, UioDevice};

#[derive(Debug, Clone)]
pub struct Options {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub workers: usize,
    /// How often sysfs is rescanned even without netlink events.
    pub rescan: Duration,
    /// Serve targetcli on the D-Bus system bus.
    pub dbus: bool,
    /// After serving commands, a device thread keeps checking the ring for
    /// this long before it sleeps in poll(): trades CPU for the wake-up
    /// latency of the next command. 0 disables it.
    pub poll_spin: Duration,
    /// Complete in ring order even where out-of-order is offered.
    pub in_order: bool,
}

impl Default for Options {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            workers: (cpus * 8).clamp(16, 128),
            rescan: Duration::from_secs(5),
            dbus: true,
            poll_spin: Duration::ZERO,
            in_order: false,
        }
    }
}

/// A device as its threads share it. Any of them may read the ring and
/// complete into it; the ring and the queue of read commands each have a
/// lock (taken in that order: queue, then ring).
struct DevShared {
    label: String,
    uio: UioDevice,
    ring: Mutex<Ring>,
    /// Commands read from the ring and not started yet.
    queue: Mutex<VecDeque<CmdRequest>>,
    /// Spent requests whose buffers the next ring read reuses.
    spare: Mutex<Vec<CmdRequest>>,
    /// Coalesces the uio writes that tell the kernel about completions.
    doorbell: Doorbell,
    /// Workers holding a token for this device.
    tokens: AtomicUsize,
    /// The most workers one device may hold, so a dead or slow backing
    /// device cannot take every worker from the others.
    cap: usize,
    /// Commands started and not completed (workers and the device thread).
    running: AtomicUsize,
    /// No new ring entries are read while set (reconfiguration, stop).
    paused: AtomicBool,
    poll_spin: Duration,
    backing: Mutex<Result<Arc<Backing>, String>>,
    wake: EventFd,
    stop: AtomicBool,
    reconfig: Mutex<Option<String>>,
}

/// A data-in command at least this large makes the device thread summon
/// workers for the commands queued behind it: besides its SG_IO, its
/// completion write carries the kernel's copy out of the data area, so the
/// commands behind it would wait for two copies. Measured (see
/// docs/performance-notes.md): 1 MiB reads at QD4 gain 25-45%; the same rule
/// for every command of 64 KiB or more cost 64 KiB reads and writes and
/// 1 MiB writes about an eighth in extra wake-ups, so it stops at reads.
const SUMMON_BEHIND_READ_BYTES: u64 = 512 << 10;

/// Spent requests kept per device for reuse (enough for a full queue).
const MAX_SPARE: usize = 256;

/// Per-thread buffers reused from command to command.
#[derive(Default)]
struct ThreadScratch {
    dma: Scratch,
    sg: SgScratch,
    entries: Vec<Entry>,
    done: Vec<Completion>,
}

impl DevShared {
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

    /// Reads new ring entries into the queue (unless paused); entries that
    /// need no I/O are completed at once. Returns false if the ring is
    /// unusable.
    fn read_ring(&self, queue: &mut VecDeque<CmdRequest>, t: &mut ThreadScratch) -> bool {
        if self.paused.load(Ordering::SeqCst) {
            return true;
        }
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
                Entry::Cmd(cmd) => queue.push_back(cmd),
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
        // Only for our own publications (rare: bad entries, PAD): the
        // caller holds the queue lock, which another thread's completion
        // work should not extend.
        if told {
            self.kick();
        }
        true
    }

    /// The next command to run: from the queue, else freshly read from the
    /// ring. Counts it as running.
    fn next(&self, t: &mut ThreadScratch) -> Option<CmdRequest> {
        let mut q = self.queue.lock().unwrap();
        if q.is_empty() && !self.read_ring(&mut q, t) {
            self.stop.store(true, Ordering::SeqCst);
            self.wake.wake();
        }
        let cmd = q.pop_front()?;
        self.running.fetch_add(1, Ordering::SeqCst);
        Some(cmd)
    }

    /// Runs one command on the current backing device and completes it.
    fn run(&self, cmd: CmdRequest, t: &mut ThreadScratch) {
        let backing = self.backing.lock().unwrap().clone();
        let c = match backing {
            Ok(b) => {
                let total = cmd.data_len();
                let mut ctx = (b.fd(), &*self.uio.map, b.timeout_ms, &mut t.sg);
                let (dir, o) = passthrough::execute(
                    &cmd,
                    &b.info.params,
                    &mut t.dma,
                    &mut ctx,
                    |(fd, map, tmo, sg), io| sg_io(*fd, map, io, *tmo, sg),
                );
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
        let mut spare = self.spare.lock().unwrap();
        if spare.len() < MAX_SPARE {
            spare.push(cmd);
        }
        drop(spare);
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 && self.paused.load(Ordering::SeqCst) {
            // The device thread waits for the last command to finish.
            self.wake.wake();
        }
    }
}

/// A pool worker: takes a device token, runs that device's commands until
/// there are none, gives the token back.
fn worker(rx: Receiver<Arc<DevShared>>) {
    let mut t = ThreadScratch::default();
    for dev in rx {
        while let Some(cmd) = dev.next(&mut t) {
            dev.run(cmd, &mut t);
        }
        dev.tokens.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Opens the backing device of a config string, or says why not.
fn open_backing(cfg: &str) -> Result<Arc<Backing>, String> {
    let c = config::parse(cfg).map_err(|e| e.to_string())?;
    let b = backing::open(&c).map_err(|e| e.to_string())?;
    Ok(Arc::new(b))
}

struct DeviceThread {
    shared: Arc<DevShared>,
    name: uio::UioName,
    handle: JoinHandle<()>,
}

/// The device thread: waits for uio events, reads the ring, hands all but
/// one of the new commands to pool workers and runs the last itself (so a
/// lone command costs no thread hop). It also carries out reconfiguration
/// and stop, each once no command is running.
fn run_device(dev: Arc<DevShared>, jobs: Sender<Arc<DevShared>>) {
    let label = dev.label.clone();
    let mut t = ThreadScratch::default();
    let mut stop_deadline: Option<Instant> = None;
    let mut spin_until: Option<Instant> = None;
    let mut revents = [0i16; 2];
    loop {
        if dev.stop.load(Ordering::SeqCst) && stop_deadline.is_none() {
            // Every command read must be completed before we go: with
            // out-of-order completion its slot may already hold another
            // command's response, so the next daemon could not re-read it.
            dev.paused.store(true, Ordering::SeqCst);
            let tmo = dev
                .backing
                .lock()
                .unwrap()
                .as_ref()
                .map_or(0, |b| b.timeout_ms);
            stop_deadline = Some(Instant::now() + Duration::from_secs(tmo as u64 / 1000 + 10));
        }
        if let Some(d) = stop_deadline {
            let left = dev.ring.lock().unwrap().outstanding();
            if left == 0 || Instant::now() > d {
                if left > 0 {
                    log::warn!(
                        "{label}: stopping with {left} commands unfinished; the kernel times them out"
                    );
                }
                break;
            }
        }
        // A reconfiguration waits until no command runs.
        if dev.reconfig.lock().unwrap().is_some() {
            dev.paused.store(true, Ordering::SeqCst);
            if dev.running.load(Ordering::SeqCst) == 0 {
                let cfg = dev.reconfig.lock().unwrap().take().unwrap();
                let mut b = dev.backing.lock().unwrap();
                *b = Err("reconfiguring".into()); // close the old device first
                *b = open_backing(&cfg);
                match &*b {
                    Ok(nb) => log::info!("{label}: reconfigured: {}", nb.info.describe()),
                    Err(e) => log::error!(
                        "{label}: reconfigured with a bad config ({e}); answering NOT READY"
                    ),
                }
                drop(b);
                if stop_deadline.is_none() {
                    dev.paused.store(false, Ordering::SeqCst);
                }
            }
        }
        if spin_until.is_some_and(|u| Instant::now() < u) {
            // Busy after recent work: check the ring without sleeping.
            if !dev.ring.lock().unwrap().has_new() {
                std::hint::spin_loop();
                continue;
            }
            revents = [0; 2];
        } else if let Err(e) = sys::poll_in(&[dev.uio.fd(), dev.wake.fd()], 1000, &mut revents) {
            log::error!("{label}: poll: {e}");
            break;
        }
        if revents[0] != 0 {
            if let Err(e) = sys::read_u32(dev.uio.fd()) {
                log::info!("{label}: uio device went away ({e})");
                break;
            }
        }
        if revents[1] != 0 {
            dev.wake.drain();
        }
        let queued = {
            let mut q = dev.queue.lock().unwrap();
            if !dev.read_ring(&mut q, &mut t) {
                break;
            }
            q.len()
        };
        if queued > 0 {
            // This thread runs one command at a time. Commands waiting
            // behind it get workers, up to the cap: at wake-up one per
            // waiting command, and later, when the command in front of them
            // is a large read (SUMMON_BEHIND_READ_BYTES), one per waiting
            // command beyond the workers already on the device. At
            // most one round of summons per command run: a worker that
            // finds nothing to do gives its token back and must not be
            // summoned again at once.
            let mut first = true;
            while let Some(cmd) = dev.next(&mut t) {
                let big_read = cmd.data_len() >= SUMMON_BEHIND_READ_BYTES
                    && matches!(
                        cmd.cdb.first(),
                        Some(&(op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16))
                    );
                if first || big_read {
                    let waiting = dev.queue.lock().unwrap().len();
                    let busy = dev.tokens.load(Ordering::SeqCst);
                    let want = if first {
                        waiting.min(dev.cap.saturating_sub(busy))
                    } else {
                        waiting.min(dev.cap).saturating_sub(busy)
                    };
                    for _ in 0..want {
                        dev.tokens.fetch_add(1, Ordering::SeqCst);
                        if jobs.send(dev.clone()).is_err() {
                            log::error!("{label}: worker pool gone");
                            return;
                        }
                    }
                }
                first = false;
                dev.run(cmd, &mut t);
            }
            if !dev.poll_spin.is_zero() && !dev.paused.load(Ordering::SeqCst) {
                spin_until = Some(Instant::now() + dev.poll_spin);
            }
        }
    }
    // Let the kernel see whatever completed.
    dev.publish(&mut dev.ring.lock().unwrap());
    dev.kick();
}

/// How long a device that failed to start waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

pub struct Daemon {
    opts: Options,
    jobs: Sender<Arc<DevShared>>,
    workers: Vec<JoinHandle<()>>,
    devices: HashMap<String, DeviceThread>,
    /// Devices that could not be started, by uio, with the name they had.
    /// Devices that could not be started, by uio: the name they had and
    /// when they were tried. Retried when the name changes or after
    /// `RETRY` (another process may have held the uio device open).
    failed: HashMap<String, (uio::UioName, Instant)>,
}

impl Daemon {
    pub fn new(opts: Options) -> Daemon {
        let (tx, rx) = crossbeam_channel::unbounded::<Arc<DevShared>>();
        let workers = (0..opts.workers)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("sg-worker-{i}"))
                    .spawn(move || worker(rx))
                    .expect("spawn worker")
            })
            .collect();
        Daemon {
            opts,
            jobs: tx,
            workers,
            devices: HashMap::new(),
            failed: HashMap::new(),
        }
    }

    fn start(&mut self, d: &UioDev) {
        let label = format!("{} ({})", d.name.configfs_dir(), d.uio);
        let retry = self.failed.contains_key(&d.uio);
        let fail = |s: &mut Self, why: String| {
            if retry {
                log::debug!("{label}: {why} (will retry)");
            } else {
                log::error!("{label}: {why} (will retry every {RETRY:?})");
            }
            s.failed
                .insert(d.uio.clone(), (d.name.clone(), Instant::now()));
        };
        let uiodev = match UioDevice::open(&self.opts.sys, &self.opts.dev, &d.uio) {
            Ok(u) => u,
            Err(e) => return fail(self, format!("cannot open /dev/{}: {e}", d.uio)),
        };
        let ring = match Ring::new(uiodev.map.clone()) {
            Ok(mut r) => {
                if self.opts.in_order {
                    r.force_in_order();
                }
                r
            }
            Err(e) => return fail(self, e.to_string()),
        };
        let backing = open_backing(&d.name.cfg);
        match &backing {
            Ok(b) => log::info!(
                "{label}: '{}' serving {} (ring flags {:#x})",
                d.name.cfg,
                b.info.describe(),
                ring.flags()
            ),
            Err(e) => log::error!(
                "{label}: bad config '{}' ({e}); answering every command NOT READY",
                d.name.cfg
            ),
        }
        let shared = Arc::new(DevShared {
            label: label.clone(),
            uio: uiodev,
            ring: Mutex::new(ring),
            queue: Mutex::new(VecDeque::new()),
            spare: Mutex::new(Vec::new()),
            doorbell: Doorbell::default(),
            tokens: AtomicUsize::new(0),
            cap: (self.opts.workers / 2).max(1),
            running: AtomicUsize::new(0),
            paused: AtomicBool::new(false),
            poll_spin: self.opts.poll_spin,
            backing: Mutex::new(backing),
            wake: EventFd::new().expect("eventfd"),
            stop: AtomicBool::new(false),
            reconfig: Mutex::new(None),
        });
        let jobs = self.jobs.clone();
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("dev-{}", d.uio))
            .spawn(move || run_device(s2, jobs))
            .expect("spawn device thread");
        self.failed.remove(&d.uio);
        self.devices.insert(
            d.uio.clone(),
            DeviceThread {
                shared,
                name: d.name.clone(),
                handle,
            },
        );
    }

    fn stop_device(&mut self, uio: &str) {
        if let Some(t) = self.devices.remove(uio) {
            t.shared.paused.store(true, Ordering::SeqCst);
            t.shared.stop.store(true, Ordering::SeqCst);
            t.shared.wake.wake();
            let _ = t.handle.join();
            log::info!("{}: stopped", t.shared.label);
        }
    }

    /// Brings the running devices in line with sysfs.
    pub fn reconcile(&mut self) {
        let found = uio::scan(&self.opts.sys, "sg");
        let live: Vec<String> = self.devices.keys().cloned().collect();
        for uio in live {
            let t = &self.devices[&uio];
            let gone = t.handle.is_finished() || !found.iter().any(|d| d.uio == uio);
            if gone {
                self.stop_device(&uio);
            }
        }
        self.failed.retain(|u, _| found.iter().any(|d| &d.uio == u));
        for d in &found {
            if let Some(t) = self.devices.get_mut(&d.uio) {
                if t.name != d.name {
                    if t.name.device != d.name.device || t.name.hba != d.name.hba {
                        // Another device reused the uio minor.
                        let uio = d.uio.clone();
                        self.stop_device(&uio);
                        self.start(d);
                    } else {
                        log::info!("{}: new config '{}'", t.shared.label, d.name.cfg);
                        *t.shared.reconfig.lock().unwrap() = Some(d.name.cfg.clone());
                        t.shared.paused.store(true, Ordering::SeqCst);
                        t.name = d.name.clone();
                        t.shared.wake.wake();
                    }
                }
            } else {
                let due = match self.failed.get(&d.uio) {
                    None => true,
                    Some((name, at)) => name != &d.name || at.elapsed() >= RETRY,
                };
                if due {
                    self.start(d);
                }
            }
        }
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Runs until SIGTERM/SIGINT.
    pub fn run(mut self) {
        let mut nl: Option<netlink::Listener> = None;
        let mut nl_warned = false;
        let mut buf = vec![0u8; 16384];
        let mut revents = [0i16; 1];
        let mut last_scan = Instant::now() - self.opts.rescan;
        let mut bus: Option<zbus::blocking::Connection> = None;
        let mut bus_tried: Option<Instant> = None;
        while !sys::stop_requested() {
            if self.opts.dbus
                && bus.is_none()
                && bus_tried.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
            {
                let first = bus_tried.is_none();
                bus_tried = Some(Instant::now());
                match crate::dbus::serve() {
                    Ok((c, role)) => {
                        log::info!("D-Bus: serving targetcli as {role:?}");
                        bus = Some(c);
                    }
                    Err(e) if first => log::warn!(
                        "D-Bus: {e}; targetcli cannot list user:sg for now \
                         (retrying every 10 s)"
                    ),
                    Err(e) => log::debug!("D-Bus: {e}"),
                }
            }
            if nl.is_none() {
                match netlink::Listener::open() {
                    Ok(l) => {
                        log::info!("listening to TCM-USER netlink events");
                        nl = Some(l);
                    }
                    Err(e) if !nl_warned => {
                        log::warn!(
                            "no TCM-USER netlink events ({e}); rescanning sysfs every {:?}",
                            self.opts.rescan
                        );
                        nl_warned = true;
                    }
                    Err(_) => {}
                }
            }
            let mut event = false;
            if let Some(l) = &nl {
                if sys::poll_in(&[l.fd()], 1000, &mut revents).is_ok() && revents[0] != 0 {
                    match l.recv(&mut buf) {
                        Ok(evs) => {
                            for e in evs {
                                log::debug!("netlink event {} for {:?}", e.cmd, e.device);
                            }
                            event = true;
                        }
                        Err(e) => {
                            log::warn!("netlink: {e}; reopening");
                            nl = None;
                        }
                    }
                }
            } else {
                std::thread::sleep(Duration::from_millis(500));
            }
            if event || last_scan.elapsed() >= self.opts.rescan {
                self.reconcile();
                last_scan = Instant::now();
            }
        }
        drop(bus);
        log::info!("stopping: finishing commands in flight");
        let uios: Vec<String> = self.devices.keys().cloned().collect();
        for u in &uios {
            if let Some(t) = self.devices.get(u) {
                t.shared.paused.store(true, Ordering::SeqCst);
                t.shared.stop.store(true, Ordering::SeqCst);
                t.shared.wake.wake();
            }
        }
        for u in uios {
            self.stop_device(&u);
        }
        drop(self.jobs);
        for w in self.workers {
            let _ = w.join();
        }
        log::info!("stopped");
    }
}

/// For `check-config`: parses and probes without opening exclusively.
pub fn check_config(cfg: &str) -> Result<String, String> {
    let c = config::parse(cfg).map_err(|e| e.to_string())?;
    let info = backing::probe(&c, Path::new("/sys")).map_err(|e| e.to_string())?;
    Ok(format!("sg: {}", info.describe()))
}
