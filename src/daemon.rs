//! The daemon: a registry of devices kept in step with sysfs and the
//! TCM-USER netlink events, one event-loop thread per device, and a shared
//! pool of SG_IO workers.
//!
//! A command travels: uio event -> the device thread reads the ring ->
//! a worker runs it with SG_IO -> the worker queues the completion and wakes
//! the device thread -> the device thread writes the completions, publishes
//! `cmd_tail` and rings the doorbell once per batch.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config;
use crate::dma::Scratch;
use crate::error::CmdError;
use crate::passthrough::{self, completion};
use crate::scsi::direction::Direction;
use crate::sg::backing::{self, Backing};
use crate::sg::io::{sg_io, SgScratch};
use crate::sys::{self, EventFd};
use crate::tcmu::mapping::Mapping;
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
        }
    }
}

/// State a device shares with the workers.
struct DevShared {
    label: String,
    map: Arc<Mapping>,
    done: Mutex<Vec<Completion>>,
    wake: EventFd,
    stop: AtomicBool,
    reconfig: Mutex<Option<String>>,
}

struct Job {
    dev: Arc<DevShared>,
    backing: Arc<Backing>,
    cmd: CmdRequest,
}

fn worker(rx: Receiver<Job>) {
    let mut scratch = Scratch::default();
    let mut sg = SgScratch::default();
    for job in rx {
        let total = job.cmd.data_len();
        let b = &job.backing;
        let mut ctx = (b.fd(), &*job.dev.map, b.timeout_ms, &mut sg);
        let (dir, o) = passthrough::execute(
            &job.cmd,
            &b.info.params,
            &mut scratch,
            &mut ctx,
            |(fd, map, t, sg), io| sg_io(*fd, map, io, *t, sg),
        );
        if !o.is_good() {
            log::debug!(
                "{}: cmd {} opcode {:#04x} -> status {:#04x} sense {:02x?}",
                job.dev.label,
                job.cmd.cmd_id,
                job.cmd.cdb[0],
                o.status,
                &o.sense[..crate::scsi::sense::sense_len(&o.sense)]
            );
        }
        let c = completion(job.cmd.cmd_id, dir, total, &o);
        job.dev.done.lock().unwrap().push(c);
        job.dev.wake.wake();
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

/// How a device thread hands commands to the shared worker pool.
struct Dispatch {
    jobs: Sender<Job>,
    /// Commands read from the ring and not yet handed to a worker.
    queue: VecDeque<CmdRequest>,
    /// Commands handed to workers and not yet back.
    in_workers: usize,
    /// The most commands of this device the workers hold at once, so a dead
    /// or slow backing device cannot take every worker from the others.
    cap: usize,
}

impl Dispatch {
    fn pump(&mut self, shared: &Arc<DevShared>, backing: &Arc<Backing>) -> Result<(), ()> {
        while self.in_workers < self.cap {
            let Some(cmd) = self.queue.pop_front() else {
                break;
            };
            let job = Job {
                dev: shared.clone(),
                backing: backing.clone(),
                cmd,
            };
            self.jobs.send(job).map_err(|_| ())?;
            self.in_workers += 1;
        }
        Ok(())
    }
}

fn run_device(
    shared: Arc<DevShared>,
    uiodev: UioDevice,
    mut ring: Ring,
    mut backing: Result<Arc<Backing>, String>,
    mut dispatch: Dispatch,
) {
    let label = shared.label.clone();
    let mut entries = Vec::new();
    let mut stop_deadline: Option<Instant> = None;
    let mut revents = [0i16; 2];
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        if stopping && stop_deadline.is_none() {
            // Every command read must be completed before we go: with
            // out-of-order completion its slot may already hold another
            // command's response, so the next daemon could not re-read it.
            let grace = backing.as_ref().map_or(0, |b| b.timeout_ms / 1000) as u64 + 10;
            stop_deadline = Some(Instant::now() + Duration::from_secs(grace));
        }
        if let Some(d) = stop_deadline {
            if ring.outstanding() == 0 || Instant::now() > d {
                if ring.outstanding() > 0 {
                    log::warn!(
                        "{label}: stopping with {} commands unfinished; the kernel times them out",
                        ring.outstanding()
                    );
                }
                break;
            }
        }
        if let Err(e) = sys::poll_in(&[uiodev.fd(), shared.wake.fd()], 1000, &mut revents) {
            log::error!("{label}: poll: {e}");
            break;
        }
        if revents[0] != 0 {
            if let Err(e) = sys::read_u32(uiodev.fd()) {
                log::info!("{label}: uio device went away ({e})");
                break;
            }
        }
        if revents[1] != 0 {
            shared.wake.drain();
        }
        let mut batch = std::mem::take(&mut *shared.done.lock().unwrap());
        dispatch.in_workers -= batch.len();
        // A reconfiguration waits until the commands in flight are done.
        let pending = shared.reconfig.lock().unwrap().is_some();
        if pending && ring.outstanding() == batch.len() {
            let cfg = shared.reconfig.lock().unwrap().take().unwrap();
            drop(backing);
            backing = open_backing(&cfg);
            match &backing {
                Ok(b) => log::info!("{label}: reconfigured: {}", b.info.describe()),
                Err(e) => log::error!(
                    "{label}: reconfigured with a bad config ({e}); answering NOT READY"
                ),
            }
        }
        if !stopping && !pending {
            entries.clear();
            if let Err(e) = ring.poll_into(&mut entries) {
                log::error!(
                    "{label}: ring unusable: {e}; stopping this device (needs action/reset_ring)"
                );
                break;
            }
            for e in entries.drain(..) {
                match e {
                    Entry::Cmd(cmd) => match &backing {
                        Ok(_) => dispatch.queue.push_back(cmd),
                        Err(why) => {
                            let o = CmdError::NotReady(why.clone()).outcome();
                            batch.push(completion(cmd.cmd_id, Direction::None, 0, &o));
                        }
                    },
                    Entry::BadCmd { cmd_id, why } => {
                        log::warn!("{label}: cmd {cmd_id}: {why}");
                        let o = CmdError::Ring(why).outcome();
                        batch.push(completion(cmd_id, Direction::None, 0, &o));
                    }
                    Entry::Tmr { tmr_type, cmd_ids } => {
                        log::info!(
                            "{label}: task management {tmr_type:?} for commands {cmd_ids:?}; \
                             they complete as the backing device answers"
                        );
                    }
                    Entry::Unknown { cmd_id, op } => {
                        log::warn!(
                            "{label}: entry opcode {op} unknown; completing with UNKNOWN_OP"
                        );
                        let mut c = Completion::good(cmd_id);
                        c.unknown_op = true;
                        batch.push(c);
                    }
                }
            }
        }
        if let Ok(b) = &backing {
            if dispatch.pump(&shared, b).is_err() {
                log::error!("{label}: worker pool gone");
                break;
            }
        }
        for c in batch {
            if let Err(e) = ring.complete(c) {
                log::error!("{label}: {e}");
            }
        }
        if ring.flush() {
            if let Err(e) = uiodev.kick() {
                log::error!("{label}: uio write: {e}");
            }
        }
    }
    // Let the kernel see whatever completed.
    for c in std::mem::take(&mut *shared.done.lock().unwrap()) {
        let _ = ring.complete(c);
    }
    if ring.flush() {
        let _ = uiodev.kick();
    }
}

/// How long a device that failed to start waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

pub struct Daemon {
    opts: Options,
    jobs: Sender<Job>,
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
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
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
            Ok(r) => r,
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
            map: uiodev.map.clone(),
            done: Mutex::new(Vec::new()),
            wake: EventFd::new().expect("eventfd"),
            stop: AtomicBool::new(false),
            reconfig: Mutex::new(None),
        });
        let dispatch = Dispatch {
            jobs: self.jobs.clone(),
            queue: VecDeque::new(),
            in_workers: 0,
            cap: (self.opts.workers / 2).max(1),
        };
        let s2 = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("dev-{}", d.uio))
            .spawn(move || run_device(s2, uiodev, ring, backing, dispatch))
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
