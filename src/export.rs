//! `tcmu-sg export` / `unexport`: a `user:sg` backstore over a backing
//! device, exported through tcm_loop, for users without targetcli.

use std::path::{Path, PathBuf};
use std::time::Duration;

use configfs::{Control, IscsiExport, LoopTarget, Target};

use crate::config;
use crate::sg::backing;

/// Which fabric the backstore is exported on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fabric {
    /// tcm_loop: the LUN appears as a local SCSI disk.
    Loop,
    /// LIO's iSCSI target on `portal`; `initiator` gets an ACL (else any
    /// initiator may log in).
    Iscsi {
        portal: String,
        initiator: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct ExportSpec {
    pub name: String,
    pub hba: u32,
    /// Options appended to the config string (`max_xfer_kb=64;timeout_s=5`).
    pub options: Option<String>,
    pub backing: PathBuf,
    pub lun: u64,
    pub fabric: Fabric,
    /// Device attributes written before the LUN is exported
    /// (e.g. `pgr_support=0`).
    pub attribs: Vec<(String, String)>,
    /// Ring settings written to `control` before the device is enabled
    /// (`NAME=VALUE`, see `set_control`).
    pub control: Vec<String>,
}

/// Applies one `NAME=VALUE` ring setting to a control string. Only the
/// settings the kernel takes solely before enable are accepted here
/// (everything else goes through `--attrib`).
pub fn set_control(c: &mut Control, kv: &str) -> Result<(), String> {
    let (k, v) = kv
        .split_once('=')
        .ok_or_else(|| format!("control setting '{kv}': expected NAME=VALUE"))?;
    let n: u32 = v
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("control setting {k}: '{v}' is not a positive number"))?;
    match k {
        "hw_max_sectors" => c.hw_max_sectors = Some(n),
        "max_data_area_mb" => c.max_data_area_mb = Some(n),
        "data_pages_per_blk" => c.data_pages_per_blk = Some(n),
        _ => {
            return Err(format!(
                "unknown control setting '{k}' \
                 (hw_max_sectors, max_data_area_mb or data_pages_per_blk)"
            ))
        }
    }
    Ok(())
}

/// What `export` made: the local device (tcm_loop) or the target IQN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    Local(PathBuf),
    Iscsi(String),
}

/// The target IQN of an iSCSI export of backstore `name`.
pub fn iqn_for(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    format!("iqn.2003-01.org.linux-iscsi.tcmu-sg:{n}")
}

/// A NAA-5 WWN derived from the device name, so export and unexport agree
/// without state. `role` separates target (1) and initiator (2) ports.
pub fn wwn_for(name: &str, role: u8) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([role]) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("naa.5001405{:09x}", h & 0xf_ffff_ffff)
}

fn loop_target(t: &Target, name: &str) -> Result<LoopTarget, String> {
    t.loopback(&wwn_for(name, 1)).map_err(|e| e.to_string())
}

/// Creates the backstore and exports it. For tcm_loop it returns the
/// initiator's block device; the daemon must be running, since the
/// initiator's scan of the new LUN is answered by it.
pub fn export(t: &Target, spec: &ExportSpec) -> Result<Exported, String> {
    need_target(t)?;
    let mut cfg = format!("sg/{}", spec.backing.display());
    if let Some(o) = &spec.options {
        cfg.push(';');
        cfg.push_str(o);
    }
    let parsed = config::parse(&cfg).map_err(|e| e.to_string())?;
    let info = crate::backend::probe(&parsed).map_err(|e| e.to_string())?;
    let size = info.blocks * info.params.block_size as u64;
    let b = t
        .user_backstore(spec.hba, &spec.name)
        .map_err(|e| e.to_string())?;
    if b.exists() {
        return Err(format!("{} already exists", b.path().display()));
    }
    let mut control = Control {
        dev_config: cfg,
        dev_size: size,
        hw_block_size: Some(info.params.block_size),
        // Nobody but us serves this device, and we never reply: tell the
        // kernel not to wait for (or accept) netlink replies for it.
        nl_reply_supported: Some(-1),
        ..Default::default()
    };
    for kv in &spec.control {
        set_control(&mut control, kv)?;
    }
    // LIO's cmd_time_out, before the device is enabled and its handler
    // attaches: the one given, else one that leaves room for the device's
    // longest command (a tape's REWIND, hours) as crate::expiry needs.
    let cmd_time_out = match spec.attribs.iter().find(|(k, _)| k == "cmd_time_out") {
        Some((_, v)) => v.clone(),
        None => cmd_time_out_for(&parsed, &info).as_secs().to_string(),
    };
    refuse_no_window(&parsed, &info, &cmd_time_out)?;
    b.create_with(&control, &[("cmd_time_out".into(), cmd_time_out)])
        .map_err(|e| e.to_string())?;
    // Nothing half-made is left behind: a later failure undoes the export.
    finish_export(t, spec, &b, info.block).inspect_err(|_| {
        let _ = unexport(t, &spec.name, spec.hba);
    })
}

/// The `cmd_time_out` a device needs for its longest command: LIO's own
/// default (30 s) for a disk, more for a tape, changer or MMC drive.
pub fn cmd_time_out_for(cfg: &config::DevConfig, info: &backing::BackingInfo) -> Duration {
    let longest = backing::timeouts_of(cfg, info.params.class).longest();
    let floor = if info.block {
        crate::expiry::BLOCK_SG_FLOOR
    } else {
        Duration::ZERO
    };
    needed_cmd_time_out(info.params.class, longest, floor, info.queueing)
}

/// The `cmd_time_out` for a device whose longest SG_IO timeout is
/// `longest`, on a node with this floor and queueing: what the timeout
/// needs, at least LIO's default. A disk's transport recovery does not
/// raise it (a disk's `cmd_time_out` stays under the initiator's 30 s
/// command timeout: its SG_IO timeout is lowered to make room instead).
pub fn needed_cmd_time_out(
    class: crate::scsi::direction::DeviceClass,
    longest: Duration,
    floor: Duration,
    queueing: Duration,
) -> Duration {
    let queueing = if class.splits_by_lba() {
        Duration::ZERO
    } else {
        queueing
    };
    crate::expiry::Timing::cmd_time_out_for(longest, floor, queueing).max(LIO_CMD_TIME_OUT)
}

/// An export whose commands could never start (the backing transport's
/// recovery takes the whole of `cmd_time_out`) is refused, naming the fix.
fn refuse_no_window(
    cfg: &config::DevConfig,
    info: &backing::BackingInfo,
    cmd_time_out: &str,
) -> Result<(), String> {
    let Ok(secs) = cmd_time_out.trim().parse::<u64>() else {
        return Ok(()); // LIO judges it
    };
    let longest = backing::timeouts_of(cfg, info.params.class).longest();
    let floor = if info.block {
        crate::expiry::BLOCK_SG_FLOOR
    } else {
        Duration::ZERO
    };
    let t = crate::expiry::Timing::queued(Duration::from_secs(secs), longest, floor, info.queueing);
    if t.window() != Some(Duration::ZERO) {
        return Ok(());
    }
    let mut why = format!(
        "cmd_time_out {secs} s leaves no time for a command to start: an SG_IO to {} may \
         take {} s",
        cfg.path.display(),
        t.sg_bound.as_secs()
    );
    if !info.queueing.is_zero() {
        why.push_str(&format!(
            ", {} s of it in its transport's recovery of a lost session; lower the \
             iSCSI sessions' replacement_timeout (iscsiadm -m node -o update -n \
             node.session.timeo.replacement_timeout -v 5, then log in again) or \
             multipath.conf's fast_io_fail_tmo, or",
            info.queueing.as_secs()
        ));
    }
    // The shortest that leaves a margin of window, the SG_IO timeout lowered.
    let enough = (secs..)
        .find(|&c| {
            let t = crate::expiry::Timing::queued(
                Duration::from_secs(c),
                longest,
                floor,
                info.queueing,
            );
            t.window().is_some_and(|w| w >= t.margin)
        })
        .unwrap_or(secs);
    why.push_str(&format!(" give --attrib cmd_time_out={enough} or more"));
    Err(why)
}

/// LIO's default `cmd_time_out` for a TCMU device.
pub const LIO_CMD_TIME_OUT: Duration = Duration::from_secs(30);

/// `disk`: the initiator will see a block device (the backing has one);
/// else it gets an sg node (and a tape its st node).
fn finish_export(
    t: &Target,
    spec: &ExportSpec,
    b: &configfs::UserBackstore,
    disk: bool,
) -> Result<Exported, String> {
    for (k, v) in spec.attribs.iter().filter(|(k, _)| k != "cmd_time_out") {
        b.set_attrib(k, v)
            .map_err(|e| format!("attribute {k}={v}: {e}"))?;
    }
    match &spec.fabric {
        Fabric::Loop => {
            let l = loop_target(t, &spec.name)?;
            l.create(1, &wwn_for(&spec.name, 2))
                .map_err(|e| e.to_string())?;
            let addr = l
                .add_lun(1, spec.lun, b.path())
                .map_err(|e| e.to_string())?;
            // A disk's block device; a tape's or changer's sg node.
            let sys = Path::new("/sys");
            let wait = Duration::from_secs(60);
            if disk {
                addr.wait_block_device(sys, wait)
            } else {
                addr.wait_sg_device(sys, wait)
            }
            .map(Exported::Local)
            .map_err(|e| e.to_string())
        }
        Fabric::Iscsi { portal, initiator } => {
            let iqn = iqn_for(&spec.name);
            let it = t.iscsi(&iqn).map_err(|e| e.to_string())?;
            it.create(
                b.path(),
                &IscsiExport {
                    tpgt: 1,
                    portal: portal.clone(),
                    lun: spec.lun,
                    initiator: initiator.clone(),
                },
            )
            .map_err(|e| e.to_string())?;
            Ok(Exported::Iscsi(iqn))
        }
    }
}

/// Points an existing backstore at a new config string (the kernel sends
/// RECONFIG_DEVICE; the daemon drains the commands in flight and reopens).
/// The string is checked first, so a typo is refused here; a device that
/// vanished later is answered NOT READY by the daemon.
pub fn set_config(t: &Target, name: &str, hba: u32, cfg: &str) -> Result<(), String> {
    let cfg = if cfg.starts_with("sg/") {
        cfg.to_string()
    } else {
        format!("sg/{cfg}")
    };
    config::parse(&cfg).map_err(|e| e.to_string())?;
    let b = t.user_backstore(hba, name).map_err(|e| e.to_string())?;
    if !b.exists() {
        return Err(format!("{} does not exist", b.path().display()));
    }
    b.set_attrib("dev_config", &cfg).map_err(|e| e.to_string())
}

/// LIO's configfs tree is there, or the error that says how to get it.
fn need_target(t: &Target) -> Result<(), String> {
    if t.available() {
        return Ok(());
    }
    Err(format!(
        "{} not found: load the modules and mount configfs \
         (modprobe -a target_core_user tcm_loop; mount -t configfs none /sys/kernel/config)",
        t.root().display()
    ))
}

/// Removes what `export` created. A name with nothing behind it is an
/// error, so a typo does not pass for a removal.
pub fn unexport(t: &Target, name: &str, hba: u32) -> Result<(), String> {
    need_target(t)?;
    let l = loop_target(t, name)?;
    let it = t.iscsi(&iqn_for(name)).map_err(|e| e.to_string())?;
    let b = t.user_backstore(hba, name).map_err(|e| e.to_string())?;
    if !l.path().exists() && !it.path().exists() && !b.exists() {
        return Err(format!(
            "nothing named '{name}' to remove: no {} and no tcm_loop or iSCSI target \
             exported under that name (`tcmu-sg status` lists the devices tcmu-sg serves; \
             --hba if the backstore is not on user_{hba})",
            b.path().display()
        ));
    }
    if l.path().exists() {
        l.remove(1).map_err(|e| e.to_string())?;
    }
    if it.path().exists() {
        it.remove(1).map_err(|e| e.to_string())?;
    }
    b.remove().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wwns_are_stable_and_distinct() {
        assert_eq!(wwn_for("d0", 1), wwn_for("d0", 1));
        assert_ne!(wwn_for("d0", 1), wwn_for("d0", 2));
        assert_ne!(wwn_for("d0", 1), wwn_for("d1", 1));
        assert_eq!(wwn_for("d0", 1).len(), "naa.".len() + 16);
        assert_eq!(
            iqn_for("Disk_1"),
            "iqn.2003-01.org.linux-iscsi.tcmu-sg:disk-1"
        );
    }

    #[test]
    fn a_transports_recovery_lowers_a_disks_timeout_but_raises_a_tapes_cmd_time_out() {
        use crate::scsi::direction::DeviceClass;
        let s = Duration::from_secs;
        let floor = crate::expiry::BLOCK_SG_FLOOR;
        // A disk over iSCSI keeps LIO's default: under the initiator's 30 s.
        assert_eq!(
            needed_cmd_time_out(DeviceClass::Block, s(20), floor, s(5)),
            LIO_CMD_TIME_OUT
        );
        // A tape's long commands need their time, the recovery on top.
        let without = needed_cmd_time_out(DeviceClass::Stream, s(900), Duration::ZERO, s(0));
        let with = needed_cmd_time_out(DeviceClass::Stream, s(900), Duration::ZERO, s(5));
        assert!(with > without, "{with:?} {without:?}");
    }

    #[test]
    fn unexport_of_a_name_with_nothing_behind_it_is_an_error_that_says_why() {
        let root = std::env::temp_dir().join(format!("tcmu-sg-unexport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let t = Target::at(&root);
        let e = unexport(&t, "d0", 1).unwrap_err();
        assert!(e.contains("modprobe -a target_core_user"), "{e}");
        std::fs::create_dir_all(root.join("core")).unwrap();
        let e = unexport(&t, "typo", 1).unwrap_err();
        assert!(e.contains("nothing named 'typo'"), "{e}");
        // Something exported under the name is removed.
        std::fs::create_dir_all(root.join("core/user_1/d0")).unwrap();
        unexport(&t, "d0", 1).unwrap();
        assert!(!root.join("core/user_1/d0").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn control_settings() {
        let mut c = Control::default();
        set_control(&mut c, "data_pages_per_blk=4").unwrap();
        set_control(&mut c, "max_data_area_mb=64").unwrap();
        set_control(&mut c, "hw_max_sectors=2048").unwrap();
        assert_eq!(
            (c.data_pages_per_blk, c.max_data_area_mb, c.hw_max_sectors),
            (Some(4), Some(64), Some(2048))
        );
        for bad in [
            "data_pages_per_blk",
            "data_pages_per_blk=0",
            "max_data_area_mb=-1",
            "max_data_area_mb=1,dev_size=1",
            "dev_config=sg//dev/sda",
            "nl_reply_supported=1",
        ] {
            let before = c.clone();
            assert!(set_control(&mut c, bad).is_err(), "{bad}");
            assert_eq!(c, before, "{bad} changed the control");
        }
    }
}
