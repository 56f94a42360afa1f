//! The devices the daemon serves, kept in step with sysfs: a crew per
//! `sg/` uio device, started, reconfigured and stopped as devices come, change
//! and go.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::backing_state::{open_backing, BackingState};
use super::device::{Device, Names};
use super::dispatch::{Budget, Crew, Work};
use crate::config::OptionDefaults;
use crate::tcmu::ring::{attach, RingActions};
use crate::tcmu::uio::{self, UioDev, UioDevice, UioName};

/// How long a device that failed to start waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

/// A device's configfs actions, for [`attach`] (the benchmarks' floor
/// handler, `examples/floor.rs`, attaches with them too).
impl RingActions for configfs::UserBackstore {
    fn block(&mut self, on: bool) -> Result<(), String> {
        let v = if on { "1" } else { "0" };
        self.action("block_dev", v).map_err(|e| e.to_string())
    }

    fn reset(&mut self) -> Result<(), String> {
        self.action("reset_ring", "1").map_err(|e| e.to_string())
    }
}

struct Served {
    crew: Arc<Crew<Device>>,
    name: UioName,
}

pub struct Registry {
    sys: PathBuf,
    dev: PathBuf,
    poll_spin: Duration,
    in_order: bool,
    budget: Arc<Budget>,
    defaults: Arc<RwLock<OptionDefaults>>,
    devices: HashMap<String, Served>,
    /// The crews being served, for the status server.
    view: Arc<Mutex<Vec<Arc<Crew<Device>>>>>,
    /// Devices that could not be started, by uio: the name they had and
    /// when they were tried. Retried when the name changes or after
    /// `RETRY` (another process may have held the uio device open).
    failed: HashMap<String, (UioName, Instant)>,
}

impl Registry {
    pub fn new(
        opts: &super::Options,
        budget: Arc<Budget>,
        defaults: Arc<RwLock<OptionDefaults>>,
    ) -> Registry {
        Registry {
            sys: opts.sys.clone(),
            dev: opts.dev.clone(),
            poll_spin: opts.poll_spin,
            in_order: opts.in_order,
            budget,
            defaults,
            devices: HashMap::new(),
            view: Arc::new(Mutex::new(Vec::new())),
            failed: HashMap::new(),
        }
    }

    /// The crews being served, kept current for the status server.
    pub fn view(&self) -> Arc<Mutex<Vec<Arc<Crew<Device>>>>> {
        self.view.clone()
    }

    fn publish(&self) {
        let mut crews: Vec<_> = self.devices.values().map(|s| s.crew.clone()).collect();
        crews.sort_by_key(|c| c.work().uio_number());
        *self.view.lock().unwrap() = crews;
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// A device that could not be started is due for another try: the
    /// daemon then reconciles without waiting for its next rescan, so a
    /// device whose attach raced its own configuration (LIO refuses
    /// `block_dev` until the device is enabled) is served `RETRY` later.
    pub fn retry_due(&self) -> bool {
        self.failed.values().any(|(_, at)| at.elapsed() >= RETRY)
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
        let uiodev = match UioDevice::open(&self.sys, &self.dev, &d.uio) {
            Ok(u) => u,
            Err(e) => {
                // EPERM for root: the unit's device access list, fixed
                // when it started, has no uio major (the module came later).
                let hint = if e.raw_os_error() == Some(libc::EPERM) {
                    "; under systemd this means target_core_user was loaded after \
                     tcmu-sg started: restart it (systemctl restart tcmu-sg)"
                } else {
                    ""
                };
                return fail(self, format!("cannot open /dev/{}: {e}{hint}", d.uio));
            }
        };
        let store = match configfs::Target::at(self.sys.join("kernel/config/target"))
            .user_backstore(d.name.hba, &d.name.device)
        {
            Ok(s) => s,
            Err(e) => return fail(self, e.to_string()),
        };
        // LIO's cmd_time_out: commands it may have failed back never run
        // (see `crate::expiry`).
        let cmd_time_out = store
            .attrib_path("cmd_time_out")
            .map_err(|e| e.to_string())
            .and_then(|p| super::stall::read_cmd_time_out(&p).map(|t| (p, t)));
        let cmd_time_out = match cmd_time_out {
            Ok(t) => t,
            Err(e) => return fail(self, format!("cmd_time_out: {e}")),
        };
        // Task management notifications in the ring (logged and counted),
        // where the kernel offers them.
        let tmr = store.attribs().iter().any(|a| a == "tmr_notification");
        if tmr {
            if let Err(e) = store.set_attrib("tmr_notification", "1") {
                log::warn!("{label}: cannot turn on tmr_notification: {e}");
            }
        }
        let actions = store.actions();
        // Whatever a previous handler left in the ring completes BUSY (the
        // initiator retries it); nothing it left is read.
        let ring = match attach(uiodev.map.clone(), &mut store.clone()) {
            Ok(mut r) => {
                if self.in_order {
                    r.force_in_order();
                }
                r
            }
            Err(e) => return fail(self, e.to_string()),
        };
        let flags = ring.flags();
        // What this kernel offers, once per device: nothing is assumed from
        // one kernel version.
        log::info!(
            "{label}: the kernel offers mailbox flags {flags:#x} ({}), actions {}, \
             task management notification {}",
            crate::tcmu::abi::describe_flags(flags),
            if actions.is_empty() {
                "none".into()
            } else {
                actions.join(" ")
            },
            if tmr { "on" } else { "not offered" }
        );
        let backing = open_backing(
            &d.name.cfg,
            &self.defaults.read().unwrap(),
            &d.name.configfs_dir(),
        );
        let cap = backing.cap();
        let cmd_time_out = (
            cmd_time_out.0,
            raise_cmd_time_out(&store, &backing, cmd_time_out.1, &label),
        );
        match &backing {
            BackingState::Up(b) => log::info!(
                "{label}: '{}' serving {}, up to {cap} commands at once, SG_IO timeouts {}",
                d.name.cfg,
                b.info.describe(),
                b.timeouts.describe(),
            ),
            BackingState::Bad(e) => log::error!(
                "{label}: bad config '{}' ({e}); answering every command NOT READY",
                d.name.cfg
            ),
            BackingState::Lost(l) => log::warn!(
                "{label}: '{}': {}; answering NOT READY and trying it again every {:?} \
                 or less",
                d.name.cfg,
                l.why(),
                super::backing_state::REOPEN_BACKOFF.1
            ),
        }
        if let BackingState::Up(b) = &backing {
            if b.identity.is_none() {
                log::warn!(
                    "{label}: the backing device has no device identification or unit \
                     serial VPD page; if its path goes and comes back, the unit found \
                     there cannot be checked to be the same"
                );
            }
        }
        let names = Names {
            uio: d.uio.clone(),
            name: d.name.configfs_dir(),
            cfg: d.name.cfg.clone(),
        };
        let dev = match Device::new(
            names,
            uiodev,
            ring,
            backing,
            self.poll_spin,
            self.defaults.clone(),
            cmd_time_out,
        ) {
            Ok(dev) => dev,
            Err(e) => return fail(self, format!("eventfd: {e}")),
        };
        crate::stats::DeviceStats::count(&dev.stats.ring_resets);
        dev.log_timing();
        let crew = match Crew::start(&format!("sg-{}", d.uio), dev, cap, self.budget.clone()) {
            Ok(c) => c,
            Err(e) => return fail(self, format!("cannot start a thread: {e}")),
        };
        self.failed.remove(&d.uio);
        self.devices.insert(
            d.uio.clone(),
            Served {
                crew,
                name: d.name.clone(),
            },
        );
    }

    fn stop(&mut self, uio: &str) {
        if let Some(s) = self.devices.remove(uio) {
            s.crew.work().request_stop();
            Self::wait_stopped(&s);
        }
    }

    fn wait_stopped(s: &Served) {
        let dev = s.crew.work();
        // The device gives up on unfinished commands after its SG_IO
        // timeout and a grace; this is a bound beyond that.
        if !s.crew.wait_gone(dev.stop_grace() + Duration::from_secs(5)) {
            log::error!("{}: threads still busy; leaving them", dev.label());
        }
        log::info!(
            "{}: stopped after {} commands, at most {} at once",
            dev.label(),
            crate::stats::DeviceStats::get(&dev.stats.done),
            crate::stats::DeviceStats::get(&dev.stats.peak_in_flight),
        );
    }

    /// Stops every device: all are told at once, then waited for.
    pub fn stop_all(&mut self) {
        for s in self.devices.values() {
            s.crew.work().request_stop();
        }
        for (_, s) in self.devices.drain() {
            Self::wait_stopped(&s);
        }
        self.publish();
    }

    /// Brings the running devices in line with sysfs.
    pub fn reconcile(&mut self) {
        let found = uio::scan(&self.sys, "sg");
        let live: Vec<String> = self.devices.keys().cloned().collect();
        for uio in live {
            let s = &self.devices[&uio];
            let gone = s.crew.finished() || !found.iter().any(|d| d.uio == uio);
            if gone {
                self.stop(&uio);
            }
        }
        self.failed.retain(|u, _| found.iter().any(|d| &d.uio == u));
        for d in &found {
            if let Some(s) = self.devices.get_mut(&d.uio) {
                if s.name != d.name {
                    if s.name.device != d.name.device || s.name.hba != d.name.hba {
                        // Another device reused the uio minor.
                        let uio = d.uio.clone();
                        self.stop(&uio);
                        self.start(d);
                    } else {
                        log::info!("{}: new config '{}'", s.crew.work().label(), d.name.cfg);
                        s.crew.work().request_reconfig(d.name.cfg.clone());
                        s.name = d.name.clone();
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
        self.publish();
    }
}

/// A device whose longest command needs more than LIO's default
/// `cmd_time_out` (a tape's REWIND, hours, under 30 s) gets it raised, if
/// LIO still allows the change (the device is not exported yet: targetcli
/// creates a backstore before its LUNs). A value other than the default
/// was chosen by someone and stays. Returns the value in force; where it
/// is too short, the device's SG_IO timeouts are lowered instead (see
/// `crate::expiry`), with a warning.
fn raise_cmd_time_out(
    store: &configfs::UserBackstore,
    backing: &BackingState,
    now: Duration,
    label: &str,
) -> Duration {
    let BackingState::Up(b) = backing else {
        return now;
    };
    let longest = b.timeouts.longest();
    let needed = crate::export::needed_cmd_time_out(
        b.info.params.class,
        longest,
        b.sg_floor(),
        b.queueing(),
    );
    if now != crate::export::LIO_CMD_TIME_OUT || now >= needed {
        return now;
    }
    match store.set_attrib("cmd_time_out", &needed.as_secs().to_string()) {
        Ok(()) => {
            log::info!(
                "{label}: raised LIO's cmd_time_out from {} s to {} s for the device's \
                 longest commands ({} s)",
                now.as_secs(),
                needed.as_secs(),
                longest.as_secs()
            );
            needed
        }
        Err(e) => {
            log::warn!(
                "{label}: the device's longest commands take up to {} s, more than \
                 cmd_time_out {} s leaves room for, and it cannot be raised now ({e}: \
                 LIO changes it only while the device is not exported); set it to {} s \
                 (targetcli: set attribute cmd_time_out={}) before exporting the LUN",
                longest.as_secs(),
                now.as_secs(),
                needed.as_secs(),
                needed.as_secs()
            );
            now
        }
    }
}
