//! The backing device a config string names, whatever its kind: a SCSI
//! device (`sg::backing`) or a dm-multipath map (`mpath`). The one place
//! that tells them apart.

use std::path::Path;

use crate::config::DevConfig;
use crate::sg::backing::{self, Backing, BackingError, BackingInfo};

fn sys() -> &'static Path {
    Path::new("/sys")
}

/// Inspects the backing device without opening it for SG_IO.
pub fn probe(cfg: &DevConfig) -> Result<BackingInfo, BackingError> {
    let r = backing::resolve(&cfg.path, sys())?;
    if crate::mpath::is_dm(&r, sys()) {
        return crate::mpath::probe(cfg, &r, sys());
    }
    refuse_a_maps_path(cfg, &r)?;
    backing::probe_resolved(cfg, &r, sys())
}

/// Opens the backing device for SG_IO, for the device `served`
/// (`user_<hba>/<name>`).
pub fn open(cfg: &DevConfig, served: &str) -> Result<Backing, BackingError> {
    let r = backing::resolve(&cfg.path, sys())?;
    if crate::mpath::is_dm(&r, sys()) {
        return crate::mpath::open(cfg, &r).map_err(explain_open_error);
    }
    refuse_own_lun(cfg, &r, served, sys())?;
    refuse_a_maps_path(cfg, &r)?;
    backing::open(cfg).map_err(explain_open_error)
}

/// An exclusive open refused with EBUSY becomes [`BackingError::Busy`],
/// naming what holds the disk; EPERM (as root: a device access list)
/// [`BackingError::Denied`].
fn explain_open_error(e: BackingError) -> BackingError {
    match e {
        BackingError::Io { path, err } if err.raw_os_error() == Some(libc::EPERM) => {
            BackingError::Denied(path)
        }
        BackingError::Io { path, err } if err.raw_os_error() == Some(libc::EBUSY) => {
            let holders = holders_of(&path, sys(), Path::new("/proc/self/mountinfo"));
            BackingError::Busy {
                holders: if holders.is_empty() {
                    "another exclusive opener: a second tcmu-sg device or pscsi \
                     backstore on it, or a program such as mkfs"
                        .into()
                } else {
                    format!("held by {}", holders.join(", "))
                },
                path,
            }
        }
        e => e,
    }
}

/// What holds a block device or one of its partitions: device-mapper
/// and md devices stacked on it (by their names) and mounted filesystems.
pub fn holders_of(node: &Path, sys: &Path, mountinfo: &Path) -> Vec<String> {
    let Ok(r) = backing::resolve(node, sys) else {
        return Vec::new();
    };
    if !r.block {
        return Vec::new();
    }
    let disk = r.sysfs(sys);
    // The disk and its partitions: (sysfs dir, kernel name, major:minor).
    let mut parts = vec![disk.clone()];
    if let Ok(d) = std::fs::read_dir(&disk) {
        parts.extend(
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("partition").exists()),
        );
    }
    let mounts = std::fs::read_to_string(mountinfo).unwrap_or_default();
    let mut out = Vec::new();
    for p in &parts {
        let kname = p
            .canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        for h in std::fs::read_dir(p.join("holders"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let hname = h.file_name().to_string_lossy().into_owned();
            let what = match backing::read_trim(&h.path().join("dm/name")) {
                Some(dm) => format!("device-mapper {dm} ({hname})"),
                None => hname,
            };
            out.push(format!("{what} on {kname}"));
        }
        let Some(devno) = backing::read_trim(&p.join("dev")) else {
            continue;
        };
        // mountinfo: id parent major:minor root mount-point ...
        for l in mounts.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            if f.get(2) == Some(&devno.as_str()) {
                if let Some(at) = f.get(4) {
                    out.push(format!("{kname} mounted on {at}"));
                }
            }
        }
    }
    out
}

/// The tcm_loop LUN that exports this very device: every command sent to
/// it would come back to the device and wait on itself until its SG_IO
/// timeout. Refused before anything is sent (a node name such as
/// /dev/sdc passes to that LUN when the disk that had it goes).
fn refuse_own_lun(
    cfg: &DevConfig,
    r: &backing::Resolved,
    served: &str,
    sys: &Path,
) -> Result<(), BackingError> {
    let addr = r
        .sysfs(sys)
        .join("device")
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name()?.to_str()?.parse::<configfs::ScsiAddr>().ok());
    let Some(addr) = addr else {
        return Ok(());
    };
    let lio = configfs::Target::at(sys.join("kernel/config/target"));
    let own = lio.root().join("core").join(served).canonicalize().ok();
    match lio.loop_lun_backstore(&addr) {
        Some(b) if Some(&b) == own.as_ref() => Err(BackingError::OwnLun {
            path: cfg.path.clone(),
            served: served.to_string(),
            lun: addr.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A disk that a multipath map holds is one path to a unit the map
/// reaches by several (and the map's claim keeps it from being opened
/// exclusively): say which map to give instead.
fn refuse_a_maps_path(cfg: &DevConfig, r: &backing::Resolved) -> Result<(), BackingError> {
    // An sg node's disk: its block device's holders.
    let dev = if r.block {
        r.sysfs(sys())
    } else {
        let block = r.sysfs(sys()).join("device/block");
        match backing::first_entry(&block) {
            Some(n) => block.join(n),
            None => return Ok(()),
        }
    };
    let map = std::fs::read_dir(dev.join("holders"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|h| h.ok())
        .find_map(|h| {
            let name = backing::read_trim(&h.path().join("dm/name"))?;
            let uuid = backing::read_trim(&h.path().join("dm/uuid")).unwrap_or_default();
            uuid.starts_with("mpath-").then_some(name)
        });
    match map {
        Some(name) => Err(BackingError::Map {
            path: cfg.path.clone(),
            why: format!(
                "a path of the multipath map {name}, which holds it; give the map \
                 (sg//dev/mapper/{name}) to serve the unit through all its paths"
            ),
        }),
        None => Ok(()),
    }
}

/// For `check-config` and targetcli's CheckConfig: parses and probes,
/// then opens the node exclusively as the daemon would and closes it, so
/// that a disk something else holds is refused here as it would be there.
pub fn check_config(cfg: &str) -> Result<String, String> {
    let c = crate::config::parse(cfg).map_err(|e| e.to_string())?;
    let info = probe(&c).map_err(|e| e.to_string())?;
    if info.block {
        backing::open_node(&info, true)
            .map_err(explain_open_error)
            .map_err(|e| e.to_string())?;
    }
    let mut out = format!("sg: {}", info.describe());
    if let Some(note) = floor_note(&c, info.block) {
        out.push_str("; ");
        out.push_str(&note);
    }
    Ok(out)
}

/// A `timeout_s` under the kernel's floor for SG_IO on a block node acts
/// as the floor: said, since the string reads otherwise.
fn floor_note(c: &DevConfig, block: bool) -> Option<String> {
    let floor = crate::expiry::BLOCK_SG_FLOOR.as_secs();
    let t = u64::from(c.timeout_s?);
    (block && t < floor).then(|| {
        format!(
            "note: timeout_s={t} acts as {floor} s, the least the kernel allows an SG_IO \
             on a disk's block node"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_under_the_block_floor_is_noted() {
        let c = |s| crate::config::parse(s).unwrap();
        let n = floor_note(&c("sg//dev/sdb;timeout_s=3"), true).unwrap();
        assert!(n.contains("timeout_s=3 acts as 7 s"), "{n}");
        assert_eq!(floor_note(&c("sg//dev/sdb;timeout_s=3"), false), None);
        assert_eq!(floor_note(&c("sg//dev/sdb;timeout_s=7"), true), None);
        assert_eq!(floor_note(&c("sg//dev/sdb"), true), None);
    }

    /// A sysfs and configfs of our own: sdc (8:32) is 3:0:1:0, the LUN
    /// tcm_loop target naa.1's tpgt_1 exports from core/user_1/d0.
    #[test]
    fn a_device_is_refused_its_own_lun() {
        let t = std::env::temp_dir().join(format!("tcmu-sg-ownlun-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        let mk = |p: &str| std::fs::create_dir_all(t.join(p)).unwrap();
        mk("devices/host3/target3:0:1/3:0:1:0");
        mk("dev/block/8:32");
        std::os::unix::fs::symlink(
            t.join("devices/host3/target3:0:1/3:0:1:0"),
            t.join("dev/block/8:32/device"),
        )
        .unwrap();
        let lio = "kernel/config/target";
        mk(&format!("{lio}/core/user_1/d0"));
        mk(&format!("{lio}/core/user_1/d1"));
        mk(&format!("{lio}/loopback/naa.1/tpgt_1/lun/lun_0"));
        std::fs::write(
            t.join(format!("{lio}/loopback/naa.1/tpgt_1/address")),
            "3:0:1\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            t.join(format!("{lio}/core/user_1/d0")),
            t.join(format!(
                "{lio}/loopback/naa.1/tpgt_1/lun/lun_0/tcm_loop_port"
            )),
        )
        .unwrap();
        let cfg = crate::config::parse("sg//dev/sdc").unwrap();
        let sdc = |minor| backing::Resolved {
            real: "/dev/sdc".into(),
            block: true,
            major: 8,
            minor,
        };
        let e = refuse_own_lun(&cfg, &sdc(32), "user_1/d0", &t).unwrap_err();
        assert!(matches!(e, BackingError::OwnLun { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("the LUN user_1/d0 itself exports (tcm_loop, 3:0:1:0)"),
            "{e}"
        );
        // Another device may be stacked on d0's LUN; a disk of another
        // host, or a node without a SCSI address, is no LUN of ours.
        assert!(refuse_own_lun(&cfg, &sdc(32), "user_1/d1", &t).is_ok());
        assert!(refuse_own_lun(&cfg, &sdc(48), "user_1/d0", &t).is_ok());
        std::fs::write(
            t.join(format!("{lio}/loopback/naa.1/tpgt_1/address")),
            "4:0:1\n",
        )
        .unwrap();
        assert!(refuse_own_lun(&cfg, &sdc(32), "user_1/d0", &t).is_ok());
        let _ = std::fs::remove_dir_all(&t);
    }
}
