//! The daemon: a registry of devices kept in step with sysfs and the
//! TCM-USER netlink events (`registry`), a crew of threads per device that
//! reads its ring and runs its commands (`dispatch`, `device`), and the
//! D-Bus service targetcli talks to.

mod device;
pub mod dispatch;
mod registry;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::sys;
use crate::tcmu::netlink;
use registry::Registry;

#[derive(Debug, Clone)]
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
    /// After serving commands, a device's leader keeps checking the ring
    /// for this long before it sleeps in poll(): trades CPU for the
    /// wake-up latency of the next command. 0 disables it.
    pub poll_spin: Duration,
    /// Complete in ring order even where out-of-order is offered.
    pub in_order: bool,
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
        }
    }
}

pub struct Daemon {
    opts: Options,
    registry: Registry,
}

impl Daemon {
    pub fn new(opts: Options) -> Daemon {
        let registry = Registry::new(&opts);
        Daemon { opts, registry }
    }

    /// Brings the running devices in line with sysfs.
    pub fn reconcile(&mut self) {
        self.registry.reconcile();
    }

    pub fn device_count(&self) -> usize {
        self.registry.len()
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
        self.registry.stop_all();
        log::info!("stopped");
    }
}
