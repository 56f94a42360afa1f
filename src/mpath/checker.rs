//! A map's checker: one thread per map that keeps tcmu-sg's view of the
//! paths current, every second and at once after a path error.
//!
//! - It follows the map's membership (`/sys/block/dm-N/slaves`): a path
//!   multipathd adds is probed, its identity checked against the unit's,
//!   and used; one it removes is closed.
//! - It reads each path's SCSI device state and ALUA access state from
//!   sysfs, and dm's view of the paths and groups (`DM_TABLE_STATUS`).
//! - After a path error it tells dm, so that dm's own view (and that of
//!   everything else using the map) follows at once: `DM_MPATH_PROBE_PATHS`
//!   where the kernel has it (6.16 on), else `fail_path` of the path that
//!   failed. dm reinstates a path only through multipathd's checker.
//! - It tests the paths tcmu-sg failed with TEST UNIT READY; one that
//!   answers is used again once dm has it active (or dm's view cannot be
//!   read), after its reservation registration is brought in step (`pr`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::dm;
use super::map::{dm_view, tell, Multipath};
use super::path::{Dm, Own, Path};
use super::verdict::path_error;

/// How often the paths are looked at when nothing asks sooner.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A path dm keeps failed this long after it answers again is logged:
/// only multipathd reinstates paths in dm.
const REINSTATE_WARN: Duration = Duration::from_secs(30);

pub fn spawn(map: Weak<Multipath>, stop: Arc<AtomicBool>) {
    let name = map
        .upgrade()
        .map(|m| format!("mpath-{}", m.name))
        .unwrap_or_default();
    let r = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || run(map, stop));
    if let Err(e) = r {
        log::error!("cannot start a multipath checker thread: {e}");
    }
}

fn run(map: Weak<Multipath>, stop: Arc<AtomicBool>) {
    let mut c = Checker::default();
    loop {
        let Some(m) = map.upgrade() else { return };
        if stop.load(Ordering::Acquire) {
            return;
        }
        let kicked = {
            let g = m.kick.0.lock().unwrap();
            let (mut g, _) = m
                .kick
                .1
                .wait_timeout_while(g, CHECK_EVERY, |k| !*k && !stop.load(Ordering::Acquire))
                .unwrap();
            std::mem::take(&mut *g)
        };
        if stop.load(Ordering::Acquire) {
            return;
        }
        c.check(&m, kicked);
        if m.removed.load(Ordering::Acquire) {
            return;
        }
    }
}

/// What the checker remembers between looks.
#[derive(Default)]
pub struct Checker {
    /// Slaves that could not be used, and whether that was logged.
    refused: Vec<String>,
    /// Paths dm keeps failed though they answer: since when (logged once).
    held: Vec<(String, Instant, bool)>,
    table_read: Option<Instant>,
}

impl Checker {
    pub fn check(&mut self, m: &Multipath, kicked: bool) {
        let dir = m.sys.join("block").join(&m.kname);
        if !dir.exists() {
            log::error!("{}: the map is gone", m.label());
            m.removed.store(true, Ordering::Release);
            m.paths_changed();
            return;
        }
        self.membership(m, &dir);
        self.dm_view(m);
        for p in m.paths() {
            p.refresh_sysfs(&m.sys);
        }
        if kicked {
            tell_dm(m);
        }
        for p in m.paths() {
            self.look_after(m, &p);
        }
    }

    /// Follows the map's slaves: new paths added, departed ones dropped.
    fn membership(&mut self, m: &Multipath, dir: &std::path::Path) {
        let Ok(rd) = std::fs::read_dir(dir.join("slaves")) else {
            return;
        };
        let slaves: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let have: Vec<String> = m.paths().iter().map(|p| p.name.clone()).collect();
        for gone in have.iter().filter(|n| !slaves.contains(n)) {
            log::warn!("{}: path {gone} left the map", m.label());
            m.paths.write().unwrap().retain(|p| &p.name != gone);
        }
        self.refused.retain(|n| slaves.contains(n));
        for new in slaves.iter().filter(|n| !have.contains(n)) {
            match super::open_path(m, new) {
                Ok(p) => {
                    log::info!(
                        "{}: path {new} ({}) joined the map; used once it answers",
                        m.label(),
                        p.dev
                    );
                    // Tested (and registered) before it is used.
                    p.set_own(Own::Failed);
                    *p.failed.lock().unwrap() = Some((Instant::now(), "joined the map".into()));
                    // While a reservation change is under way it is not
                    // known yet: brought in step in any case.
                    let untouched = m.pr.try_lock().is_ok_and(|st| !st.touched);
                    p.set_in_step(untouched);
                    m.add_path(p);
                    self.refused.retain(|n| n != new);
                }
                Err(e) if !self.refused.contains(new) => {
                    log::warn!("{}: path {new} not used: {e}", m.label());
                    self.refused.push(new.clone());
                }
                Err(_) => {}
            }
        }
    }

    /// dm's view of the paths (and, now and then, whether it queues).
    fn dm_view(&mut self, m: &Multipath) {
        if m.dm_view.load(Ordering::Relaxed) == dm_view::DENIED {
            return;
        }
        match dm::target_status(&m.name, false) {
            Ok((_, status)) => {
                m.dm_view.store(dm_view::READ, Ordering::Relaxed);
                let Some(dps) = dm::parse_status(&status) else {
                    log::debug!("{}: dm status not understood: {status}", m.label());
                    return;
                };
                for p in m.paths() {
                    match dps.iter().find(|d| d.dev == p.dev) {
                        Some(d) => {
                            p.set_dm(if d.active { Dm::Active } else { Dm::Failed });
                            p.set_group(d.group);
                        }
                        None => p.set_dm(Dm::Unknown),
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
                log::info!(
                    "{}: dm's view of the paths cannot be read ({e}: DM_TABLE_STATUS needs \
                     CAP_SYS_ADMIN); tcmu-sg follows its own checks and the paths' states",
                    m.label()
                );
                m.dm_view.store(dm_view::DENIED, Ordering::Relaxed);
                if m.tell.load(Ordering::Relaxed) == tell::FAIL_PATH {
                    m.tell.store(tell::CHECKER, Ordering::Relaxed);
                }
                return;
            }
            Err(e) => log::debug!("{}: dm status: {e}", m.label()),
        }
        if self
            .table_read
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.table_read = Some(Instant::now());
            if let Ok((_, table)) = dm::target_status(&m.name, true) {
                let q = if dm::table_queues(&table) { 2 } else { 1 };
                m.queues.store(q, Ordering::Relaxed);
            }
        }
    }

    /// A failed path tested; a returning one used again when dm allows;
    /// a path out of step with the reservation brought in step.
    fn look_after(&mut self, m: &Multipath, p: &Arc<Path>) {
        if p.own() == Own::Failed && p.running() {
            let r = crate::sg::io::sg_io_in(p.fd(), &[0u8; 6], &mut [], 5000);
            match path_error(&r) {
                None => p.set_own(Own::Returning),
                Some(e) => log::debug!("{}: path {} still failing: {e}", m.label(), p.name),
            }
        }
        if p.own() == Own::Returning {
            if p.dm() == Dm::Failed {
                self.held_by_dm(m, p);
                return;
            }
            self.held.retain(|(n, ..)| n != &p.name);
            p.set_own(Own::Up);
            m.stats.reinstated.fetch_add(1, Ordering::Relaxed);
            let down = p
                .failed
                .lock()
                .unwrap()
                .as_ref()
                .map(|(at, why)| format!(" after {:.1} s ({why})", at.elapsed().as_secs_f64()))
                .unwrap_or_default();
            log::info!("{}: path {} back in use{down}", m.label(), p.name);
            *p.failed.lock().unwrap() = None;
        }
        if !p.in_step() && p.usable_ignoring_step().is_some() {
            match m.bring_in_step(p) {
                Ok(true) => {}
                // A reservation change is under way: at the next look.
                Ok(false) => return,
                Err(e) => {
                    log::warn!(
                        "{}: path {} cannot be brought in step with the reservation: {e}",
                        m.label(),
                        p.name
                    );
                    return;
                }
            }
        }
        if p.usable().is_some() {
            m.paths_changed();
        }
    }

    fn held_by_dm(&mut self, m: &Multipath, p: &Path) {
        let i = match self.held.iter().position(|(n, ..)| n == &p.name) {
            Some(i) => i,
            None => {
                self.held.push((p.name.clone(), Instant::now(), false));
                self.held.len() - 1
            }
        };
        let (_, since, said) = &mut self.held[i];
        if !*said && since.elapsed() >= REINSTATE_WARN {
            *said = true;
            log::warn!(
                "{}: path {} answers again but dm has kept it failed for {} s; \
                 multipathd's checker reinstates paths (is multipathd running?)",
                m.label(),
                p.name,
                REINSTATE_WARN.as_secs()
            );
        }
    }
}

/// Whether the running kernel has `DM_MPATH_PROBE_PATHS` (6.16 on).
/// Decided from its release, not by trying: on an older kernel dm hands
/// an unknown ioctl to a path, and with no path left on a map that
/// queues it waits there until one returns.
pub fn kernel_has_probe(release: &str) -> bool {
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (6, 16)
}

fn running_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Tells dm about the paths tcmu-sg found failed: `DM_MPATH_PROBE_PATHS`
/// where the kernel has it, else `fail_path` of each (CAP_SYS_ADMIN),
/// else nothing (multipathd's checker finds them).
fn tell_dm(m: &Multipath) {
    if m.tell.load(Ordering::Relaxed) == tell::UNKNOWN && !kernel_has_probe(&running_kernel()) {
        without_probe(m, &format!("this kernel ({})", running_kernel()));
    }
    let how = m.tell.load(Ordering::Relaxed);
    if how == tell::UNKNOWN || how == tell::PROBE {
        let node = std::path::Path::new("/dev").join(&m.kname);
        let probed = std::fs::File::open(&node).and_then(|f| dm::probe_paths(&f));
        match probed {
            Ok(dm::Probe::Unsupported) => without_probe(m, "the map's node"),
            Ok(r) => {
                m.tell.store(tell::PROBE, Ordering::Relaxed);
                log::info!("{}: DM_MPATH_PROBE_PATHS: {r:?}", m.label());
                return;
            }
            Err(e) => {
                log::warn!("{}: DM_MPATH_PROBE_PATHS: {e}", m.label());
                return;
            }
        }
    }
    if m.tell.load(Ordering::Relaxed) != tell::FAIL_PATH {
        return;
    }
    for p in m.paths() {
        if p.own() == Own::Failed && p.dm() != Dm::Failed {
            match dm::message(&m.name, &format!("fail_path {}", p.dev)) {
                Ok(()) => {
                    p.set_dm(Dm::Failed);
                    log::info!("{}: told dm: fail_path {} ({})", m.label(), p.dev, p.name);
                }
                Err(e) => log::warn!("{}: dm fail_path {}: {e}", m.label(), p.dev),
            }
        }
    }
}

/// dm is told some other way than the probe ioctl (`who` has none).
fn without_probe(m: &Multipath, who: &str) {
    let next = if m.dm_view.load(Ordering::Relaxed) == dm_view::DENIED {
        tell::CHECKER
    } else {
        tell::FAIL_PATH
    };
    m.tell.store(next, Ordering::Relaxed);
    log::info!(
        "{}: {who} has no DM_MPATH_PROBE_PATHS (Linux 6.16); dm is told of a failed path {}",
        m.label(),
        if next == tell::FAIL_PATH {
            "with fail_path"
        } else {
            "by multipathd's checker"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_ioctl_is_used_from_6_16_on() {
        assert!(!kernel_has_probe("6.1.0-41-amd64"));
        assert!(!kernel_has_probe("6.12.57+deb13-amd64"));
        assert!(!kernel_has_probe("5.10.0-35-amd64"));
        assert!(kernel_has_probe("6.16.0"));
        assert!(kernel_has_probe("7.3.4+deb13-amd64"));
        assert!(!kernel_has_probe(""));
    }
}
