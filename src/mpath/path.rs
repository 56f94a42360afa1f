//! One path of a map: its SCSI disk's node, open for SG_IO (the map holds
//! the disk, so it is opened without O_EXCL), and what is known of its
//! state from three sources: tcmu-sg's own commands and checks, the SCSI
//! device's state and ALUA access state in sysfs, and dm's view of it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sg::backing::read_trim;

/// tcmu-sg's own view of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Own {
    /// Answered its last command or check.
    Up = 0,
    /// A command failed on it with a path error; the checker tests it.
    Failed = 1,
    /// Answers again; waiting for dm to reinstate it, or to be brought in
    /// step with the initiator's reservation key.
    Returning = 2,
}

/// dm's view of a path (from the map's status; `Unknown` without
/// CAP_SYS_ADMIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Dm {
    Unknown = 0,
    Active = 1,
    Failed = 2,
}

/// The ALUA access state of the path's target port, ranked: lower is
/// preferred; `UNUSABLE` is never sent to.
pub mod alua {
    pub const OPTIMIZED: u8 = 0;
    pub const NON_OPTIMIZED: u8 = 1;
    /// No ALUA handler attached, or a state that serves I/O.
    pub const UNKNOWN: u8 = 2;
    pub const UNUSABLE: u8 = 9;

    /// Ranks sysfs `access_state` (scsi_dh_alua's names).
    pub fn rank(s: &str) -> u8 {
        match s {
            "active/optimized" => OPTIMIZED,
            "active/non-optimized" | "lba-dependent" => NON_OPTIMIZED,
            "standby" | "unavailable" | "offline" | "transitioning" => UNUSABLE,
            _ => UNKNOWN,
        }
    }
}

#[derive(Debug)]
pub struct Path {
    /// `sdX`.
    pub name: String,
    /// `/dev/sdX`.
    pub node: PathBuf,
    /// `major:minor`, as dm names it.
    pub dev: String,
    pub file: File,
    /// The path's transport recovery bound in ms (see
    /// `sg::backing::transport_queueing`): multipathd may change it.
    queueing_ms: AtomicU64,
    own: AtomicU8,
    dm: AtomicU8,
    /// The SCSI device state in sysfs is `running`.
    running: AtomicBool,
    alua: AtomicU8,
    /// Its priority group as dm has it: 0 the group dm uses (or unknown),
    /// 1 another enabled group, 2 a group dm bypasses.
    group: AtomicU8,
    /// Why and when it was last taken out of use (for status and logs).
    pub failed: Mutex<Option<(Instant, String)>>,
    /// Commands sent down it, and path errors it gave.
    pub sent: AtomicU64,
    pub errors: AtomicU64,
    /// Its registration matches the initiator's (see `pr`): a path that
    /// missed a change is not used until it is brought in step.
    in_step: AtomicBool,
}

impl Path {
    pub fn new(name: String, dev: String, file: File, queueing: Duration) -> Path {
        Path {
            node: FsPath::new("/dev").join(&name),
            name,
            dev,
            file,
            queueing_ms: AtomicU64::new(queueing.as_millis() as u64),
            own: AtomicU8::new(Own::Up as u8),
            dm: AtomicU8::new(Dm::Unknown as u8),
            running: AtomicBool::new(true),
            alua: AtomicU8::new(alua::UNKNOWN),
            group: AtomicU8::new(0),
            failed: Mutex::new(None),
            sent: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_step: AtomicBool::new(true),
        }
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    pub fn queueing(&self) -> Duration {
        Duration::from_millis(self.queueing_ms.load(Ordering::Relaxed))
    }

    pub fn own(&self) -> Own {
        match self.own.load(Ordering::Acquire) {
            0 => Own::Up,
            1 => Own::Failed,
            _ => Own::Returning,
        }
    }

    pub fn set_own(&self, o: Own) {
        self.own.store(o as u8, Ordering::Release);
    }

    pub fn dm(&self) -> Dm {
        match self.dm.load(Ordering::Acquire) {
            1 => Dm::Active,
            2 => Dm::Failed,
            _ => Dm::Unknown,
        }
    }

    pub fn set_dm(&self, d: Dm) {
        self.dm.store(d as u8, Ordering::Release);
    }

    /// Sets its priority group's state from dm's status (`A`, `E`, `D`).
    pub fn set_group(&self, state: char) {
        let g = match state {
            'E' => 1,
            'D' => 2,
            _ => 0,
        };
        self.group.store(g, Ordering::Relaxed);
    }

    pub fn alua(&self) -> u8 {
        self.alua.load(Ordering::Relaxed)
    }

    pub fn running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// Whether a command may be sent down it now; its preference rank
    /// among those that may (lower first): dm's current group first, then
    /// ALUA's optimized ports.
    pub fn usable(&self) -> Option<u8> {
        self.usable_ignoring_step().filter(|_| self.in_step())
    }

    /// [`Path::usable`], whether or not its registration is in step.
    pub fn usable_ignoring_step(&self) -> Option<u8> {
        let ok = self.own() == Own::Up
            && self.dm() != Dm::Failed
            && self.running()
            && self.alua() != alua::UNUSABLE;
        ok.then(|| self.group.load(Ordering::Relaxed) * 16 + self.alua())
    }

    pub fn in_step(&self) -> bool {
        self.in_step.load(Ordering::Acquire)
    }

    pub fn set_in_step(&self, v: bool) {
        self.in_step.store(v, Ordering::Release);
    }

    /// Takes the path out of use after a path error; true if it was in use.
    pub fn fail(&self, why: String) -> bool {
        let was = self.own.swap(Own::Failed as u8, Ordering::AcqRel) == Own::Up as u8;
        self.errors.fetch_add(1, Ordering::Relaxed);
        if was {
            *self.failed.lock().unwrap() = Some((Instant::now(), why));
        }
        was
    }

    /// Reads the SCSI device's state and ALUA access state from sysfs
    /// (`sys`/block/sdX/device).
    pub fn refresh_sysfs(&self, sys: &FsPath) {
        let d = sys.join("block").join(&self.name).join("device");
        let state = read_trim(&d.join("state"));
        // A path whose device directory went away is not running either.
        self.running
            .store(state.as_deref() == Some("running"), Ordering::Relaxed);
        let rank = read_trim(&d.join("access_state"))
            .map(|s| alua::rank(&s))
            .unwrap_or(alua::UNKNOWN);
        self.alua.store(rank, Ordering::Relaxed);
        // multipathd sets an iSCSI session's recovery_tmo to the map's
        // fast_io_fail_tmo when it adds the path.
        if d.exists() {
            let q = crate::sg::backing::transport_queueing(&d, sys);
            self.queueing_ms
                .store(q.as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// One word for status reports.
    pub fn state_word(&self) -> &'static str {
        match (self.own(), self.dm(), self.running(), self.alua()) {
            (Own::Failed, ..) => "failed",
            (Own::Returning, ..) => "returning",
            _ if !self.in_step() => "registering",
            (_, Dm::Failed, ..) => "dm-failed",
            (_, _, false, _) => "offline",
            (.., alua::UNUSABLE) => "standby",
            _ => "active",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> Path {
        Path::new(
            "sdz".into(),
            "8:240".into(),
            File::open("/dev/null").unwrap(),
            Duration::ZERO,
        )
    }

    #[test]
    fn a_path_is_used_only_when_every_view_allows_it() {
        let p = path();
        assert_eq!(p.usable(), Some(alua::UNKNOWN));
        assert_eq!(p.state_word(), "active");
        assert!(p.fail("host status DID_NO_CONNECT".into()));
        assert!(!p.fail("again".into()), "a second failure is not a new one");
        assert_eq!(p.usable(), None);
        assert_eq!(p.state_word(), "failed");
        assert_eq!(p.errors.load(Ordering::Relaxed), 2);
        p.set_own(Own::Returning);
        assert_eq!(p.usable(), None);
        p.set_own(Own::Up);
        p.set_dm(Dm::Failed);
        assert_eq!((p.usable(), p.state_word()), (None, "dm-failed"));
        p.set_dm(Dm::Active);
        p.alua.store(alua::rank("standby"), Ordering::Relaxed);
        assert_eq!((p.usable(), p.state_word()), (None, "standby"));
        p.alua
            .store(alua::rank("active/optimized"), Ordering::Relaxed);
        assert_eq!(p.usable(), Some(alua::OPTIMIZED));
        // dm's current group is preferred over another it may switch to.
        p.set_group('E');
        assert!(p.usable().unwrap() > alua::UNKNOWN);
        p.set_group('A');
        assert_eq!(p.usable(), Some(alua::OPTIMIZED));
        p.running.store(false, Ordering::Relaxed);
        assert_eq!((p.usable(), p.state_word()), (None, "offline"));
    }

    #[test]
    fn sysfs_state_is_read_from_the_devices_directory() {
        let dir = std::env::temp_dir().join(format!("tcmu-sg-path-{}", std::process::id()));
        let d = dir.join("block/sdz/device");
        std::fs::create_dir_all(&d).unwrap();
        let p = path();
        std::fs::write(d.join("state"), "running\n").unwrap();
        std::fs::write(d.join("access_state"), "active/non-optimized\n").unwrap();
        p.refresh_sysfs(&dir);
        assert_eq!(p.usable(), Some(alua::NON_OPTIMIZED));
        std::fs::write(d.join("state"), "blocked\n").unwrap();
        p.refresh_sysfs(&dir);
        assert_eq!(p.usable(), None);
        std::fs::write(d.join("state"), "running\n").unwrap();
        std::fs::remove_file(d.join("access_state")).unwrap();
        p.refresh_sysfs(&dir);
        assert_eq!(p.usable(), Some(alua::UNKNOWN));
        std::fs::remove_dir_all(&dir).unwrap();
        p.refresh_sysfs(&dir);
        assert_eq!(p.usable(), None, "a path whose device went away");
    }
}
