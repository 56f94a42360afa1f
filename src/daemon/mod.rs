//! The daemon: a registry of devices kept in step with sysfs and the
//! TCM-USER netlink events (`registry`), a crew of threads per device that
//! reads its ring and runs its commands (`dispatch`, `device`), and the
//! D-Bus service targetcli talks to.

mod backing_state;
pub mod budget;
mod device;
pub mod dispatch;
mod inline_meter;
mod registry;
mod stall;
mod status_server;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::OptionDefaults;
use crate::sys;
use crate::tcmu::netlink;
use dispatch::Budget;
use registry::Registry;
use status_server::StatusServer;

pub struct Options {
    pub sys: PathBuf,
    pub dev: PathBuf,
    /// The most SG_IO threads of all devices together (each device's first
    /// thread is outside the bound).
    pub max_threads: usize,
    /// How often sysfs is rescanned even without netlink events.
    pub rescan: Duration,
    /// Serve targetcli on the D-Bus system bus.
    pub dbus: bool,
    /// After serving commands, a device's thread keeps checking the ring
    /// for this long before it sleeps: trades CPU for the
    /// wake-up latency of the next command. 0 disables it.
    pub poll_spin: Duration,
    /// Complete in ring order even where out-of-order is offered.
    pub in_order: bool,
    /// Values for options config strings leave unset.
    pub defaults: OptionDefaults,
    /// The Unix socket `tcmu-sg status` asks (None: no status server).
    pub status_socket: Option<PathBuf>,
    /// Called on SIGHUP: the settings to apply now, or why the running
    /// ones stay.
    pub reload: Option<Reloader>,
}

/// Rereads the settings (the file); see `Daemon::reload`.
pub type Reloader = Box<dyn FnMut() -> Result<Reloaded, String> + Send>;

/// What a reload may change without dropping I/O.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub log_level: log::LevelFilter,
    pub max_threads: usize,
    pub defaults: OptionDefaults,
}

/// The default daemon-wide thread bound: room for 32 devices with 32
/// commands in flight each.
pub const DEFAULT_MAX_THREADS: usize = 1024;

impl Default for Options {
    fn default() -> Self {
        Options {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            max_threads: DEFAULT_MAX_THREADS,
            rescan: Duration::from_secs(5),
            dbus: true,
            poll_spin: Duration::ZERO,
            in_order: false,
            defaults: OptionDefaults::default(),
            status_socket: None,
            reload: None,
        }
    }
}

pub struct Daemon {
    opts: Options,
    registry: Registry,
    budget: Arc<Budget>,
    defaults: Arc<RwLock<OptionDefaults>>,
}

impl Daemon {
    pub fn new(opts: Options) -> Daemon {
        let budget = Budget::new(opts.max_threads);
        let defaults = Arc::new(RwLock::new(opts.defaults));
        let registry = Registry::new(&opts, budget.clone(), defaults.clone());
        Daemon {
            opts,
            registry,
            budget,
            defaults,
        }
    }

    /// SIGHUP: applies what the reloaded settings change (log level, thread
    /// bound, option defaults for devices opened from now on); on an error
    /// the running settings stay.
    fn reload(&mut self) {
        let Some(r) = self.opts.reload.as_mut() else {
            log::info!("SIGHUP: no settings file to reload");
            return;
        };
        match r() {
            Ok(new) => {
                log::set_max_level(new.log_level);
                self.budget.set_limit(new.max_threads);
                *self.defaults.write().unwrap() = new.defaults;
                log::info!(
                    "settings reloaded: log level {}, at most {} threads, defaults {:?} \
                     (for devices opened or reconfigured from now on)",
                    new.log_level,
                    new.max_threads,
                    new.defaults
                );
            }
            Err(e) => log::error!("settings not reloaded, the running ones stay: {e}"),
        }
    }

    /// Brings the running devices in line with sysfs.
    pub fn reconcile(&mut self) {
        self.registry.reconcile();
    }

    pub fn device_count(&self) -> usize {
        self.registry.len()
    }

    /// Runs until SIGTERM/SIGINT. Under systemd (NOTIFY_SOCKET) it reports
    /// READY=1 once netlink is open (never before), D-Bus was tried and the
    /// devices found are served, STATUS= with the device count, and
    /// STOPPING=1.
    pub fn run(mut self) {
        let _status = self.opts.status_socket.as_ref().and_then(|p| {
            StatusServer::start(p, self.registry.view(), self.budget.clone())
                .map_err(|e| log::error!("status socket: {e}; `tcmu-sg status` will not answer"))
                .ok()
        });
        let mut ready = false;
        let mut told_count = usize::MAX;
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
                        let hint = netlink::open_hint(&e);
                        log::error!(
                            "no TCM-USER netlink events ({e}){}{hint}; not ready (systemd \
                             is told so) until they open, retried every 0.5 s; meanwhile \
                             sysfs is rescanned every {:?}",
                            if hint.is_empty() { "" } else { ": " },
                            self.opts.rescan
                        );
                        sys::notify(
                            "STATUS=waiting for the TCM-USER netlink family (target_core_user)",
                        );
                        nl_warned = true;
                    }
                    Err(_) => {}
                }
            }
            self.budget.tick();
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
            if event || last_scan.elapsed() >= self.opts.rescan || self.registry.retry_due() {
                self.reconcile();
                last_scan = Instant::now();
            }
            if sys::reload_requested() {
                self.reload();
            }
            // Ready only once a device LIO adds is heard of: the unit's
            // Before=rtslib-fb-targetctl.service then means a handler
            // listens when LIO's saved configuration is restored.
            let n = self.device_count();
            if nl.is_some() && (!ready || n != told_count) {
                let state = if ready { "" } else { "READY=1\n" };
                sys::notify(&format!("{state}STATUS=serving {n} devices"));
                ready = true;
                told_count = n;
            }
        }
        sys::notify("STOPPING=1\nSTATUS=stopping: finishing commands in flight");
        drop(bus);
        log::info!("stopping: finishing commands in flight");
        self.registry.stop_all();
        log::info!("stopped");
    }
}
