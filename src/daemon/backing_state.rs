//! A device's backing unit through its life: opened from the config
//! string (or, if its path leads nowhere yet, as at boot before the disk
//! is found, looked for until it does), lost when it goes away (its path
//! is then opened again with back-off and served only if the same logical
//! unit is found there), replaced when the config string changes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::OptionDefaults;
use crate::error::CmdError;
use crate::sg::backing::{self, Backing, Identity};
use crate::stats::DeviceStats;
use crate::status::DeviceReport;

/// The backing device of a device, or why it has none.
pub enum BackingState {
    /// Serving through this open device.
    Up(Arc<Backing>),
    /// The config cannot be served (a bad string, no such device): every
    /// command gets NOT READY 04/03 until the config changes.
    Bad(String),
    /// It went away while serving, or was not there yet; its path is
    /// opened again with back-off, and commands get NOT READY 05/00
    /// meanwhile.
    Lost(Box<Lost>),
}

/// What `BackingSlot::reopen` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reopen {
    /// Nothing to do: the device is served, or its config is bad.
    Idle,
    /// Not back yet; the next attempt in this long.
    Wait(Duration),
    /// Served again (or for the first time) with this cap on commands in
    /// flight.
    Up(usize),
}

/// What is kept of a lost backing device: enough to open its path again
/// and check what is found there, but not its file, so the kernel can
/// give the returning disk its old name.
pub struct Lost {
    cfg: crate::config::DevConfig,
    identity: Option<Identity>,
    node: std::path::PathBuf,
    vendor_model: String,
    longest_timeout: Duration,
    sg_floor: Duration,
    queueing: Duration,
    max_inflight: usize,
    why: String,
    retry: Retry,
    /// The last other unit found at the path (logged once).
    refused: Option<Identity>,
    /// Never opened: whatever unit first appears at the path is served.
    first: bool,
}

impl Lost {
    /// Why there is no backing device (not there yet, busy, lost).
    pub fn why(&self) -> &str {
        &self.why
    }
}

/// Back-off between attempts to open a lost path again: from the first
/// value, doubling, to the second (a path that returns is served again
/// within that, plus the kernel's own scan).
pub const REOPEN_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(250), Duration::from_secs(2));

/// When a lost path is opened again, on the `REOPEN_BACKOFF` schedule.
struct Retry {
    since: Instant,
    next_try: Instant,
    backoff: Duration,
}

impl Retry {
    fn start() -> Retry {
        let now = Instant::now();
        Retry {
            since: now,
            next_try: now + REOPEN_BACKOFF.0,
            backoff: REOPEN_BACKOFF.0,
        }
    }

    /// After an attempt that found nothing to serve: the wait until the
    /// next, twice the last one up to the ceiling.
    fn failed(&mut self) -> Duration {
        self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF.1);
        self.next_try = Instant::now() + self.backoff;
        self.backoff
    }
}

/// Opens the backing device of a config string (options it leaves unset
/// from `defaults`) for the device `served` (`user_<hba>/<name>`), or
/// says why not.
pub fn open_backing(cfg: &str, defaults: &OptionDefaults, served: &str) -> BackingState {
    let c = match crate::config::parse_with(cfg, defaults) {
        Ok(c) => c,
        Err(e) => return BackingState::Bad(e.to_string()),
    };
    match crate::backend::open(&c, served) {
        Ok(b) => BackingState::Up(Arc::new(b)),
        Err(e) if e.is_absent() || e.is_busy() => {
            let timeouts = backing::timeouts_of(&c, crate::scsi::direction::DeviceClass::Block);
            BackingState::Lost(Box::new(Lost {
                node: c.path.clone(),
                cfg: c,
                identity: None,
                vendor_model: String::new(),
                longest_timeout: timeouts.longest(),
                sg_floor: crate::expiry::BLOCK_SG_FLOOR,
                queueing: Duration::ZERO,
                max_inflight: 1,
                why: if e.is_busy() {
                    e.to_string()
                } else {
                    format!("not there yet: {e}")
                },
                retry: Retry::start(),
                refused: None,
                first: true,
            }))
        }
        Err(e) => BackingState::Bad(e.to_string()),
    }
}

impl BackingState {
    /// How many commands may run at once on a device with this backing.
    pub fn cap(&self) -> usize {
        match self {
            BackingState::Up(b) => b.max_inflight(),
            BackingState::Lost(l) => l.max_inflight,
            // Every command is answered NOT READY at once: one thread does.
            BackingState::Bad(_) => 1,
        }
    }
}

/// What identifies a backing unit in reports: its name (see
/// [`Identity::name`]), then vendor and model.
fn identity_text(id: Option<&Identity>, vendor_model: &str) -> String {
    match id {
        Some(i) => format!("{} ({vendor_model})", i.name()),
        None => vendor_model.to_string(),
    }
}

/// One device's backing state behind its lock.
pub struct BackingSlot {
    state: Mutex<BackingState>,
    /// The device, for logs.
    label: String,
    /// The device's backstore, `user_<hba>/<name>`.
    served: String,
}

impl BackingSlot {
    pub fn new(state: BackingState, label: &str, served: &str) -> BackingSlot {
        if let BackingState::Up(b) = &state {
            b.engine.set_label(label);
        }
        BackingSlot {
            state: Mutex::new(state),
            label: label.to_string(),
            served: served.to_string(),
        }
    }

    /// The backing device to run a command on, or the error to answer.
    pub fn current(&self) -> Result<Arc<Backing>, CmdError> {
        match &*self.state.lock().unwrap() {
            BackingState::Up(b) => Ok(b.clone()),
            BackingState::Bad(why) => Err(CmdError::NotReady(why.clone())),
            BackingState::Lost(l) => Err(CmdError::Lost(l.why.clone())),
        }
    }

    /// The longest SG_IO timeout of the device's commands, the kernel's
    /// floor for the node and the longest wait in its queue (None: no
    /// backing device to send to).
    pub fn sg_params(&self) -> Option<(Duration, Duration, Duration)> {
        match &*self.state.lock().unwrap() {
            BackingState::Up(b) => Some((b.timeouts.longest(), b.sg_floor(), b.queueing())),
            BackingState::Lost(l) => Some((l.longest_timeout, l.sg_floor, l.queueing)),
            BackingState::Bad(_) => None,
        }
    }

    /// Fills in the backing columns and the state of a status report.
    pub fn describe(&self, r: &mut DeviceReport) {
        match &*self.state.lock().unwrap() {
            BackingState::Up(b) => {
                r.backing = b.cfg.path.display().to_string();
                r.node = b.info.node.display().to_string();
                r.identity = identity_text(
                    b.identity.as_ref(),
                    &format!("{} {}", b.info.vendor, b.info.model),
                );
                r.state = "serving".into();
                r.policy = b.info.params.policy.describe();
                b.engine.describe(r);
            }
            BackingState::Bad(why) => {
                r.state = "not ready".into();
                r.state_detail = why.clone();
            }
            BackingState::Lost(l) => {
                r.backing = l.cfg.path.display().to_string();
                r.node = l.node.display().to_string();
                r.identity = identity_text(l.identity.as_ref(), &l.vendor_model);
                if l.first {
                    r.state = "waiting".into();
                    r.state_detail = format!(
                        "for {:.0} s: {}",
                        l.retry.since.elapsed().as_secs_f64(),
                        l.why
                    );
                } else {
                    r.state = "re-opening".into();
                    r.state_detail = format!(
                        "lost {:.0} s ago: {}",
                        l.retry.since.elapsed().as_secs_f64(),
                        l.why
                    );
                }
            }
        }
    }

    /// A command found `b` gone: unless it was replaced meanwhile, the
    /// device answers NOT READY and its path is opened again. Returns
    /// whether it was marked lost now (the chores' timer then follows
    /// the back-off).
    pub fn lost(&self, b: &Arc<Backing>, why: &str, stats: &DeviceStats) -> bool {
        let mut st = self.state.lock().unwrap();
        if !matches!(&*st, BackingState::Up(cur) if Arc::ptr_eq(cur, b)) {
            return false;
        }
        log::error!(
            "{}: backing device {} lost ({why}); answering NOT READY and opening {} \
             again every {:?} or less",
            self.label,
            b.info.node.display(),
            b.cfg.path.display(),
            REOPEN_BACKOFF.1
        );
        *st = BackingState::Lost(Box::new(Lost {
            cfg: b.cfg.clone(),
            identity: b.identity.clone(),
            node: b.info.node.clone(),
            vendor_model: format!("{} {}", b.info.vendor, b.info.model),
            longest_timeout: b.timeouts.longest(),
            sg_floor: b.sg_floor(),
            queueing: b.queueing(),
            max_inflight: b.max_inflight(),
            why: format!("{} {why}", b.info.node.display()),
            retry: Retry::start(),
            refused: None,
            first: false,
        }));
        DeviceStats::count(&stats.lost);
        true
    }

    /// For a lost backing device: opens its path again when due, and
    /// serves it if it is the same logical unit (any unit, for one never
    /// opened).
    pub fn reopen(&self, stats: &DeviceStats) -> Reopen {
        let (cfg, identity, due) = match &*self.state.lock().unwrap() {
            BackingState::Lost(l) => (l.cfg.clone(), l.identity.clone(), l.retry.next_try),
            _ => return Reopen::Idle,
        };
        let now = Instant::now();
        if now < due {
            return Reopen::Wait(due - now);
        }
        // Opened without the lock: probing and INQUIRY take a while.
        let opened = crate::backend::open(&cfg, &self.served);
        let mut st = self.state.lock().unwrap();
        let BackingState::Lost(l) = &mut *st else {
            return Reopen::Idle; // reconfigured meanwhile
        };
        match opened {
            Ok(b) if l.first || backing::same_unit(&b.identity, &identity) => {
                log::info!(
                    "{}: backing device {} after {:.1} s: {}",
                    self.label,
                    if l.first { "there" } else { "back" },
                    l.retry.since.elapsed().as_secs_f64(),
                    b.info.describe()
                );
                if b.identity.is_none() {
                    log::warn!(
                        "{}: it has no identity to check (no VPD 0x83 or 0x80)",
                        self.label
                    );
                }
                if !l.first {
                    DeviceStats::count(&stats.reopened);
                }
                let cap = b.max_inflight();
                b.engine.set_label(&self.label);
                *st = BackingState::Up(Arc::new(b));
                return Reopen::Up(cap);
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
            // A busy disk says so once, and again when what holds it
            // changes; so does a path that now leads to the device's own LUN.
            Err(e)
                if (e.is_busy() || matches!(e, backing::BackingError::OwnLun { .. }))
                    && l.why != e.to_string() =>
            {
                log::warn!("{}: {e}", self.label);
                l.why = e.to_string();
            }
            Err(e) => log::debug!("{}: {} not back: {e}", self.label, cfg.path.display()),
        }
        Reopen::Wait(l.retry.failed())
    }

    /// Replaces the backing device with the one `cfg` names (the old one
    /// is closed first: it was opened exclusively), logs the result and
    /// returns the new cap on commands in flight.
    pub fn reconfigure(&self, cfg: &str, defaults: &OptionDefaults) -> usize {
        let mut b = self.state.lock().unwrap();
        *b = BackingState::Bad("reconfiguring".into());
        *b = open_backing(cfg, defaults, &self.served);
        if let BackingState::Up(nb) = &*b {
            nb.engine.set_label(&self.label);
        }
        let cap = b.cap();
        match &*b {
            BackingState::Up(nb) => log::info!(
                "{}: reconfigured: {}, up to {cap} commands at once",
                self.label,
                nb.info.describe(),
            ),
            BackingState::Bad(e) => log::error!(
                "{}: reconfigured with a bad config ({e}); answering NOT READY",
                self.label
            ),
            BackingState::Lost(l) => log::warn!(
                "{}: reconfigured to {}: {}; answering NOT READY and trying it again \
                 every {:?} or less",
                self.label,
                l.cfg.path.display(),
                l.why,
                REOPEN_BACKOFF.1
            ),
        }
        cap
    }
}
