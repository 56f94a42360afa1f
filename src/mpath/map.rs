//! A dm-multipath map as a backing device: its paths, which of them a
//! command goes down, and the command sent again down another when a path
//! fails it.
//!
//! tcmu-sg sends every command down one of the map's paths itself, on the
//! path's own SCSI disk node, rather than on the map's node (which would
//! hand the SG_IO to the path dm chooses):
//! - an SG_IO on a map that has no usable path and queues
//!   (`queue_if_no_path`, multipath.conf `no_path_retry queue` or N) waits
//!   inside dm, before any SCSI timeout starts, for as long as no path
//!   returns, and is sent when one does: after LIO may have failed the
//!   command back. Sent down a path, an SG_IO's time is bounded by its
//!   timeout and the path's transport recovery time, which the stall rule
//!   counts (`sg::backing::transport_queueing`);
//! - the command that failed names its path, so that path is taken out of
//!   use at once and the command goes down another, without waiting for
//!   dm or multipathd to notice;
//! - reservations need the paths one by one anyway (`pr`).
//!
//! The map itself is held open with O_EXCL, so nothing mounts it under the
//! initiator, and dm's view of the paths is followed: a path dm has failed
//! (its checker, an administrator's `fail_path`) is not used, and the
//! group dm uses is preferred.

use std::fs::File;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::dm;
use super::path::{Dm, Own, Path};
use super::verdict::{path_error, PathError};
use crate::dma::ChunkIo;
use crate::error::CmdError;
use crate::scsi::sense::SgResult;
use crate::sg::backing::Identity;
use crate::sg::engine::{Call, Engine, Sent};
use crate::status::{DeviceReport, MapReport, PathReport};

/// The most SG_IOs one chunk makes after path errors (QEMU's bound).
pub const MAX_RETRIES: u32 = 8;

/// How often a command that found no usable path looks again (the stall
/// rule is asked before each look; see `Multipath::send_with`).
const NO_PATH_POLL: Duration = Duration::from_millis(100);

/// Whether dm's control ioctls answered (they need CAP_SYS_ADMIN).
pub mod dm_view {
    pub const UNKNOWN: u8 = 0;
    pub const READ: u8 = 1;
    pub const DENIED: u8 = 2;
}

/// How dm learns of a path tcmu-sg found failed.
pub mod tell {
    pub const UNKNOWN: u8 = 0;
    /// `DM_MPATH_PROBE_PATHS` (Linux 6.16 and later).
    pub const PROBE: u8 = 1;
    /// `fail_path` of the path that failed (older kernels, CAP_SYS_ADMIN).
    pub const FAIL_PATH: u8 = 2;
    /// Neither is possible: multipathd's checker finds it.
    pub const CHECKER: u8 = 3;
}

/// Counters of a map's failovers.
#[derive(Debug, Default)]
pub struct MapStats {
    /// SG_IOs sent again down another path after a path error.
    pub retries: AtomicU64,
    /// Paths taken out of use after a path error.
    pub failovers: AtomicU64,
    /// Paths brought back into use.
    pub reinstated: AtomicU64,
    /// Chunks that found no usable path for as long as they could wait.
    pub no_path: AtomicU64,
}

/// The state a map's engine and its checker share.
#[derive(Debug)]
pub struct Multipath {
    /// dm's name of the map (`/dev/mapper/<name>`) and its kernel name
    /// (`dm-N`).
    pub name: String,
    pub kname: String,
    /// The sysfs root (`/sys` outside tests).
    pub sys: PathBuf,
    /// The logical unit's identity, which every path must show.
    pub identity: Option<Identity>,
    /// The largest transfer and the block size the map was opened with: a
    /// path added later must take them.
    pub max_bytes: u64,
    pub block_size: u32,
    pub(super) paths: RwLock<Vec<Arc<Path>>>,
    /// Round-robin among the preferred usable paths.
    next: AtomicUsize,
    /// Bumped whenever a path becomes usable; commands waiting for a path
    /// are woken.
    changed: (Mutex<u64>, Condvar),
    /// The checker is asked to look now (a path failed).
    pub(super) kick: (Mutex<bool>, Condvar),
    pub(super) dm_view: AtomicU8,
    pub(super) tell: AtomicU8,
    /// dm's table asks it to queue when no path is left (0 unknown, 1
    /// no, 2 yes).
    pub(super) queues: AtomicU8,
    /// The map's node is gone (the map was removed).
    pub(super) removed: std::sync::atomic::AtomicBool,
    /// No path is usable (said once, when it begins and when it ends).
    pathless: std::sync::atomic::AtomicBool,
    pub stats: MapStats,
    pub(super) pr: Mutex<super::pr::PrState>,
    /// For logs: `user_1/d0 (uio0): map mpatha`.
    pub label: Mutex<String>,
}

impl Multipath {
    pub fn new(name: String, kname: String, sys: PathBuf, identity: Option<Identity>) -> Self {
        Multipath {
            label: Mutex::new(format!("map {name}")),
            name,
            kname,
            sys,
            identity,
            max_bytes: u64::MAX,
            block_size: 0,
            paths: RwLock::new(Vec::new()),
            next: AtomicUsize::new(0),
            changed: (Mutex::new(0), Condvar::new()),
            kick: (Mutex::new(false), Condvar::new()),
            dm_view: AtomicU8::new(dm_view::UNKNOWN),
            tell: AtomicU8::new(tell::UNKNOWN),
            queues: AtomicU8::new(0),
            removed: std::sync::atomic::AtomicBool::new(false),
            pathless: std::sync::atomic::AtomicBool::new(false),
            stats: MapStats::default(),
            pr: Mutex::new(super::pr::PrState::default()),
        }
    }

    pub fn label(&self) -> String {
        self.label.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<Arc<Path>> {
        self.paths.read().unwrap().clone()
    }

    pub fn add_path(&self, p: Path) {
        self.paths.write().unwrap().push(Arc::new(p));
    }

    /// The path the next command goes down: the usable ones of the best
    /// rank, taken in turn.
    pub fn pick(&self) -> Option<Arc<Path>> {
        let paths = self.paths.read().unwrap();
        let best = paths.iter().filter_map(|p| p.usable()).min()?;
        let n = paths.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &paths[(start + i) % n])
            .find(|p| p.usable() == Some(best))
            .cloned()
    }

    /// Wakes the commands waiting for a usable path.
    pub fn paths_changed(&self) {
        if self.pathless.load(Ordering::Relaxed)
            && self.pick().is_some()
            && self.pathless.swap(false, Ordering::Relaxed)
        {
            log::info!("{}: a path is usable again", self.label());
        }
        *self.changed.0.lock().unwrap() += 1;
        self.changed.1.notify_all();
    }

    /// Waits up to `d` for a path to become usable.
    fn wait_for_path(&self, d: Duration) {
        let g = self.changed.0.lock().unwrap();
        let seen = *g;
        let _ = self.changed.1.wait_timeout_while(g, d, |n| *n == seen);
    }

    /// Asks the checker to look at the paths now.
    pub fn kick_checker(&self) {
        *self.kick.0.lock().unwrap() = true;
        self.kick.1.notify_all();
    }

    /// A command failed down `p` with `e`: the path is taken out of use
    /// (once, logged), and the checker told.
    pub fn path_failed(&self, p: &Path, e: PathError) {
        if p.fail(e.to_string()) {
            self.stats.failovers.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: path {} ({}) failed: {e}; its commands go down the others",
                self.label(),
                p.name,
                p.dev
            );
            self.kick_checker();
        }
    }

    /// Sends a chunk down the map's paths: down one, and after a path
    /// error down another, at most [`MAX_RETRIES`] more times. The stall
    /// rule (`call.admit`) is asked before every SG_IO. A chunk that finds
    /// no usable path waits for one, asking the stall rule again at every
    /// look, so that it ends (BUSY) before LIO could fail the command back;
    /// where commands never expire it waits at most its SG_IO timeout, then
    /// ends with [`CmdError::NoPath`]. `sg` sends down one path.
    pub fn send_with(
        &self,
        call: &mut Call<'_>,
        sg: impl FnMut(&Path, &mut Call<'_>) -> SgResult,
    ) -> Result<Sent, CmdError> {
        self.send_on(call, sg).map(|(s, _)| s)
    }

    /// [`Multipath::send_with`], and the path whose answer it returned.
    pub fn send_on(
        &self,
        call: &mut Call<'_>,
        mut sg: impl FnMut(&Path, &mut Call<'_>) -> SgResult,
    ) -> Result<(Sent, Option<Arc<Path>>), CmdError> {
        let mut retries = 0;
        let mut transport = false;
        let mut waiting: Option<Instant> = None;
        loop {
            (call.admit)()?;
            if self.removed.load(Ordering::Acquire) {
                let s = Sent {
                    result: SgResult::from_errno(libc::ENODEV),
                    gone: Some("map removed"),
                    retries,
                    transport_error: true,
                };
                return Ok((s, None));
            }
            let Some(p) = self.pick() else {
                if !self.pathless.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "{}: no usable path; commands wait for one as long as LIO's \
                         cmd_time_out lets them (then BUSY, unrun)",
                        self.label()
                    );
                }
                let since = *waiting.get_or_insert_with(Instant::now);
                let limit = Duration::from_millis(call.timeout_ms as u64);
                if since.elapsed() >= limit {
                    self.stats.no_path.fetch_add(1, Ordering::Relaxed);
                    return Err(CmdError::NoPath {
                        map: self.name.clone(),
                        waited: since.elapsed(),
                    });
                }
                self.wait_for_path(NO_PATH_POLL);
                continue;
            };
            let r = sg(&p, call);
            p.sent.fetch_add(1, Ordering::Relaxed);
            let verdict = path_error(&r);
            if let Some(e) = verdict {
                self.path_failed(&p, e);
            }
            if verdict.is_none() || retries == MAX_RETRIES {
                let mut s = Sent::once(r);
                s.retries = retries;
                s.transport_error |= transport;
                s.gone = None;
                return Ok((s, Some(p)));
            }
            transport = true;
            retries += 1;
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The longest a command can wait in a path's queue (the stall rule's
    /// SG_IO bound counts it): the largest of the paths' transports'.
    pub fn queueing(&self) -> Duration {
        self.paths
            .read()
            .unwrap()
            .iter()
            .map(|p| p.queueing())
            .max()
            .unwrap_or_default()
    }

    /// The map and its paths for a status report.
    pub fn report(&self) -> MapReport {
        let now = Instant::now();
        // Not waited for: a reservation change may be waiting for a path.
        let key = match self.pr.try_lock() {
            Ok(st) => st.key.map(|k| format!("{k:#x}")),
            Err(_) => Some("(being changed)".into()),
        };
        MapReport {
            name: self.name.clone(),
            dm_view: match self.dm_view.load(Ordering::Relaxed) {
                dm_view::READ => "read",
                dm_view::DENIED => "not permitted (no CAP_SYS_ADMIN)",
                _ => "unknown",
            }
            .into(),
            dm_told_by: match self.tell.load(Ordering::Relaxed) {
                tell::PROBE => "DM_MPATH_PROBE_PATHS",
                tell::FAIL_PATH => "fail_path",
                tell::CHECKER => "multipathd's checker",
                _ => "not yet known",
            }
            .into(),
            queue_if_no_path: match self.queues.load(Ordering::Relaxed) {
                1 => Some(false),
                2 => Some(true),
                _ => None,
            },
            retries: self.stats.retries.load(Ordering::Relaxed),
            failovers: self.stats.failovers.load(Ordering::Relaxed),
            reinstated: self.stats.reinstated.load(Ordering::Relaxed),
            no_path: self.stats.no_path.load(Ordering::Relaxed),
            reservation_key: key,
            paths: self
                .paths()
                .iter()
                .map(|p| PathReport {
                    name: p.name.clone(),
                    dev: p.dev.clone(),
                    state: p.state_word().into(),
                    dm: match p.dm() {
                        Dm::Active => "active",
                        Dm::Failed => "failed",
                        Dm::Unknown => "unknown",
                    }
                    .into(),
                    commands: p.sent.load(Ordering::Relaxed),
                    errors: p.errors.load(Ordering::Relaxed),
                    why: match (p.own(), &*p.failed.lock().unwrap()) {
                        (Own::Up, _) | (_, None) => String::new(),
                        (_, Some((at, why))) => {
                            format!("{why} ({:.0} s ago)", now.duration_since(*at).as_secs_f64())
                        }
                    },
                })
                .collect(),
        }
    }
}

/// The engine of a map: the shared state, the map's own node held open
/// exclusively, and the checker thread, which ends when the engine is
/// dropped.
#[derive(Debug)]
pub struct MapEngine {
    pub map: Arc<Multipath>,
    /// `/dev/dm-N`, opened with O_EXCL.
    _excl: File,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl MapEngine {
    pub fn new(map: Arc<Multipath>, excl: File) -> MapEngine {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        super::checker::spawn(Arc::downgrade(&map), stop.clone());
        MapEngine {
            map,
            _excl: excl,
            stop,
        }
    }
}

impl Drop for MapEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.map.kick_checker();
    }
}

impl Engine for MapEngine {
    fn send(&self, io: &ChunkIo<'_>, call: &mut Call<'_>) -> Result<Sent, CmdError> {
        if super::pr::is_pr_out(io.cdb) {
            return self.map.pr_out(io, call);
        }
        self.map.send_with(call, |p, c| {
            crate::sg::io::sg_io(p.fd(), c.map, io, c.timeout_ms, c.scratch)
        })
    }

    fn query_fd(&self) -> i32 {
        let paths = self.map.paths.read().unwrap();
        paths
            .iter()
            .find(|p| p.usable().is_some())
            .or(paths.first())
            .map_or(-1, |p| p.fd())
    }

    fn describe(&self, r: &mut DeviceReport) {
        r.multipath = Some(self.map.report());
    }

    fn set_label(&self, label: &str) {
        *self.map.label.lock().unwrap() = format!("{label}: map {}", self.map.name);
    }

    fn queueing(&self) -> Duration {
        self.map.queueing()
    }
}

/// The map's kernel name (`dm-N`) and dm name, and whether it is a
/// multipath map, from sysfs (`dm/uuid` of a map multipath-tools made
/// starts with `mpath-`) or, where the uuid says otherwise, from its table
/// (`Some(type)` when the table could be read).
pub fn identify(sysdir: &FsPath) -> (String, String, bool, Option<String>) {
    let kname = sysdir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let read = |f: &str| crate::sg::backing::read_trim(&sysdir.join("dm").join(f));
    let name = read("name").unwrap_or_else(|| kname.clone());
    let uuid = read("uuid").unwrap_or_default();
    if uuid.starts_with("mpath-") {
        return (kname, name, true, None);
    }
    let target = dm::target_status(&name, true).ok().map(|(t, _)| t);
    let is = target.as_deref() == Some("multipath");
    (kname, name, is, target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::{fixed_sense, host, SenseCode};
    use crate::sg::io::SgScratch;
    use crate::tcmu::mapping::Mapping;

    fn map_of(n: usize) -> Multipath {
        let m = Multipath::new("mpatha".into(), "dm-0".into(), "/nonexistent".into(), None);
        for i in 0..n {
            m.add_path(Path::new(
                format!("sd{}", (b'b' + i as u8) as char),
                format!("8:{}", 16 * (i + 1)),
                File::open("/dev/null").unwrap(),
                Duration::ZERO,
            ));
        }
        m
    }

    /// Runs `send_with` with a scripted result per SG_IO (by path name),
    /// counting the stall rule's admissions; returns what it returned and
    /// the paths the SG_IOs went down.
    fn run(
        m: &Multipath,
        admits: &mut u32,
        refuse_after: u32,
        script: &mut dyn FnMut(&str) -> SgResult,
    ) -> (Result<Sent, CmdError>, Vec<String>) {
        let map = Mapping::anonymous(4096).unwrap();
        let mut scratch = SgScratch::default();
        let mut went = Vec::new();
        let mut admit = || {
            *admits += 1;
            if *admits > refuse_after {
                Err(CmdError::Expired {
                    waited: Duration::from_secs(9),
                })
            } else {
                Ok(())
            }
        };
        let mut call = Call {
            map: &map,
            timeout_ms: 300,
            scratch: &mut scratch,
            admit: &mut admit,
        };
        let r = m.send_with(&mut call, |p, _| {
            went.push(p.name.clone());
            script(&p.name)
        });
        (r, went)
    }

    fn transport(h: u16) -> SgResult {
        SgResult {
            host_status: h,
            ..SgResult::good()
        }
    }

    #[test]
    fn commands_go_round_the_paths() {
        let m = map_of(3);
        let mut admits = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
            assert_eq!(r.unwrap().retries, 0);
            seen.extend(went);
        }
        for n in ["sdb", "sdc", "sdd"] {
            assert_eq!(seen.iter().filter(|s| *s == n).count(), 2, "{seen:?}");
        }
        assert_eq!(admits, 6);
    }

    #[test]
    fn a_path_error_moves_the_command_to_another_path_at_once() {
        let m = map_of(2);
        let mut admits = 0;
        let bad = m.paths()[0].name.clone();
        // Whichever path it starts on, the first one fails.
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |n| {
            if n == bad {
                transport(host::TRANSPORT_DISRUPTED)
            } else {
                SgResult::good()
            }
        });
        let s = r.unwrap();
        assert_eq!(s.result, SgResult::good());
        assert!(s.transport_error);
        // It went down sdb only if it started there; it ended on sdc.
        assert_eq!(went.last().unwrap(), "sdc");
        assert_eq!(m.paths()[0].own(), Own::Failed);
        // Every SG_IO was admitted first.
        assert_eq!(admits as usize, went.len());
        // The failed path gets nothing more.
        for _ in 0..4 {
            let (_, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
            assert_eq!(went, vec!["sdc".to_string()]);
        }
        assert_eq!(m.stats.failovers.load(Ordering::Relaxed), 1);
        let rep = m.report();
        assert_eq!(rep.paths[0].state, "failed");
        assert!(
            rep.paths[0].why.contains("DID_TRANSPORT_DISRUPTED"),
            "{rep:?}"
        );
    }

    #[test]
    fn the_units_answer_is_returned_unchanged_and_not_retried() {
        let m = map_of(2);
        let mut admits = 0;
        let sense = fixed_sense(SenseCode::new(0x3, 0x11, 0x00));
        let medium = SgResult::check_condition(&sense[..18]);
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| medium.clone());
        let s = r.unwrap();
        assert_eq!(s.result, medium);
        assert_eq!((s.retries, went.len()), (0, 1));
        assert!(m.paths().iter().all(|p| p.own() == Own::Up));
        let conflict = SgResult {
            status: 0x18,
            ..SgResult::good()
        };
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| conflict.clone());
        assert_eq!((r.unwrap().result, went.len()), (conflict, 1));
    }

    #[test]
    fn retries_are_bounded_and_each_is_admitted() {
        let m = map_of(2);
        // A path comes back as soon as it failed: the command keeps
        // meeting path errors.
        let mut admits = 0;
        let paths = m.paths();
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| {
            for p in &paths {
                p.set_own(Own::Up);
            }
            transport(host::NO_CONNECT)
        });
        let s = r.unwrap();
        assert_eq!(s.retries, MAX_RETRIES);
        assert_eq!(went.len() as u32, MAX_RETRIES + 1);
        assert_eq!(s.result.host_status, host::NO_CONNECT);
        assert_eq!(admits, MAX_RETRIES + 1);
        // The stall rule's refusal ends it before the next SG_IO.
        let mut admits = 0;
        let (r, went) = run(&m, &mut admits, 2, &mut |_| {
            for p in &paths {
                p.set_own(Own::Up);
            }
            transport(host::NO_CONNECT)
        });
        assert!(matches!(r, Err(CmdError::Expired { .. })));
        assert_eq!(went.len(), 2);
    }

    #[test]
    fn with_no_usable_path_a_command_waits_then_ends_without_being_sent() {
        let m = map_of(2);
        for p in m.paths() {
            p.fail("x".into());
        }
        // The stall rule refuses after a few looks: BUSY, unsent.
        let mut admits = 0;
        let (r, went) = run(&m, &mut admits, 3, &mut |_| SgResult::good());
        assert!(matches!(r, Err(CmdError::Expired { .. })), "{r:?}");
        assert!(went.is_empty());
        // Commands that never expire wait their SG_IO timeout (300 ms).
        let t = Instant::now();
        let mut admits = 0;
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
        assert!(matches!(r, Err(CmdError::NoPath { .. })), "{r:?}");
        assert!(went.is_empty() && t.elapsed() >= Duration::from_millis(300));
        assert!(admits >= 3, "the stall rule asked at every look: {admits}");
        // A path that returns while it waits is used.
        let p = m.paths()[1].clone();
        let back = std::thread::spawn({
            let p = p.clone();
            move || {
                std::thread::sleep(Duration::from_millis(50));
                p.set_own(Own::Up);
            }
        });
        let mut admits = 0;
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
        back.join().unwrap();
        assert_eq!(r.unwrap().result, SgResult::good());
        assert_eq!(went, vec!["sdc".to_string()]);
    }

    #[test]
    fn dm_and_alua_views_steer_the_choice() {
        let m = map_of(3);
        let ps = m.paths();
        ps[0].set_dm(Dm::Failed);
        let mut admits = 0;
        for _ in 0..4 {
            let (_, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
            assert_ne!(went[0], "sdb", "dm failed it");
        }
        ps[0].set_dm(Dm::Active);
        // A removed map answers as a lost backing device.
        m.removed.store(true, Ordering::Release);
        let (r, went) = run(&m, &mut admits, u32::MAX, &mut |_| SgResult::good());
        assert_eq!(r.unwrap().gone, Some("map removed"));
        assert!(went.is_empty());
    }
}
