//! A small typed view of LIO's configfs tree (`/sys/kernel/config/target`):
//! TCMU user backstores (control, enable, info, attrib/*, action/*) and
//! tcm_loop targets with their LUNs.
//!
//! Every value written is checked first (no separators smuggled into the
//! control string, names of one path component), and every error carries
//! the path that failed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
    #[error("invalid {what} '{value}'")]
    Invalid { what: &'static str, value: String },
    #[error("{0}: the kernel did not create it in time")]
    Timeout(PathBuf),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |err| Error::Io {
        path: path.to_path_buf(),
        err,
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io_at(path))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(io_at(path))
}

/// The entries of a directory, sorted (none if it cannot be read).
fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            err: e,
        }),
    }
}

fn rmdir(path: &Path) -> Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            err: e,
        }),
    }
}

/// A name that is one configfs path component.
fn component<'a>(what: &'static str, v: &'a str) -> Result<&'a str> {
    let ok = !v.is_empty()
        && v.len() <= 200
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',');
    if ok {
        Ok(v)
    } else {
        Err(Error::Invalid {
            what,
            value: v.into(),
        })
    }
}

/// The root of the target tree.
#[derive(Debug, Clone)]
pub struct Target {
    root: PathBuf,
}

impl Default for Target {
    fn default() -> Self {
        Target::at("/sys/kernel/config/target")
    }
}

impl Target {
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Target { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether configfs is mounted and target_core_mod loaded.
    pub fn available(&self) -> bool {
        self.root.join("core").is_dir()
    }

    /// A TCMU backstore `core/user_<hba>/<name>` (not created yet).
    pub fn user_backstore(&self, hba: u32, name: &str) -> Result<UserBackstore> {
        let name = component("backstore name", name)?;
        Ok(UserBackstore {
            hba_dir: self.root.join(format!("core/user_{hba}")),
            dir: self.root.join(format!("core/user_{hba}/{name}")),
        })
    }

    /// The backstore a tcm_loop LUN exports, by the LUN's initiator-side
    /// address (a TPG's `address` holds `<host>:0:<tpgt>`, and the
    /// initiator's target id is the tpgt): the canonical `core/...`
    /// directory its port link leads to, or None for a LUN of another
    /// SCSI host.
    pub fn loop_lun_backstore(&self, addr: &ScsiAddr) -> Option<PathBuf> {
        if addr.channel != 0 {
            return None;
        }
        let want = format!("{}:0:{}", addr.host, addr.target);
        let loopback = self.root.join("loopback");
        let tpg = list(&loopback).into_iter().find_map(|wwn| {
            let t = loopback.join(wwn).join(format!("tpgt_{}", addr.target));
            (read(&t.join("address")).ok()? == want).then_some(t)
        })?;
        let lun = tpg.join(format!("lun/lun_{}", addr.lun));
        fs::read_dir(lun)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_symlink())?
            .canonicalize()
            .ok()
    }

    /// A ramdisk backstore `core/rd_mcp_<hba>/<name>` (not created yet), with
    /// LIO's own SPC-3 persistent reservations.
    pub fn ramdisk(&self, hba: u32, name: &str) -> Result<Ramdisk> {
        let name = component("backstore name", name)?;
        Ok(Ramdisk {
            hba_dir: self.root.join(format!("core/rd_mcp_{hba}")),
            dir: self.root.join(format!("core/rd_mcp_{hba}/{name}")),
        })
    }

    /// A pscsi (kernel passthrough) backstore `core/pscsi_<hba>/<name>`.
    pub fn pscsi(&self, hba: u32, name: &str) -> Result<Pscsi> {
        let name = component("backstore name", name)?;
        Ok(Pscsi {
            hba_dir: self.root.join(format!("core/pscsi_{hba}")),
            dir: self.root.join(format!("core/pscsi_{hba}/{name}")),
        })
    }

    /// An iSCSI target `iscsi/<iqn>` (not created yet).
    pub fn iscsi(&self, iqn: &str) -> Result<IscsiTarget> {
        let iqn = component("iqn", iqn)?;
        if !iqn.starts_with("iqn.") && !iqn.starts_with("naa.") && !iqn.starts_with("eui.") {
            return Err(Error::Invalid {
                what: "iqn",
                value: iqn.into(),
            });
        }
        Ok(IscsiTarget {
            dir: self.root.join("iscsi").join(iqn),
        })
    }

    /// A tcm_loop target `loopback/<wwn>` (not created yet).
    pub fn loopback(&self, wwn: &str) -> Result<LoopTarget> {
        let wwn = component("wwn", wwn)?;
        Ok(LoopTarget {
            dir: self.root.join("loopback").join(wwn),
        })
    }
}

/// Settings written to a user backstore's `control` before it is enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Control {
    /// `dev_config`: `<subtype>/<cfgstring>`.
    pub dev_config: String,
    pub dev_size: u64,
    pub hw_block_size: Option<u32>,
    pub hw_max_sectors: Option<u32>,
    /// -1 tells the kernel not to wait for netlink replies for this device.
    pub nl_reply_supported: Option<i32>,
    pub max_data_area_mb: Option<u32>,
    /// Pages per data-area block (the kernel's default is 1).
    pub data_pages_per_blk: Option<u32>,
}

impl Control {
    /// The control string (comma-separated tokens) for this device.
    pub fn to_control_string(&self) -> Result<String> {
        let cfg = &self.dev_config;
        if cfg.is_empty()
            || cfg.len() > 4000
            || !cfg.contains('/')
            || cfg.bytes().any(|b| b == b',' || !(0x20..0x7f).contains(&b))
        {
            return Err(Error::Invalid {
                what: "dev_config",
                value: cfg.clone(),
            });
        }
        let mut s = format!("dev_config={cfg},dev_size={}", self.dev_size);
        if let Some(v) = self.hw_block_size {
            s += &format!(",hw_block_size={v}");
        }
        if let Some(v) = self.hw_max_sectors {
            s += &format!(",hw_max_sectors={v}");
        }
        if let Some(v) = self.nl_reply_supported {
            s += &format!(",nl_reply_supported={v}");
        }
        if let Some(v) = self.max_data_area_mb {
            s += &format!(",max_data_area_mb={v}");
        }
        if let Some(v) = self.data_pages_per_blk {
            s += &format!(",data_pages_per_blk={v}");
        }
        Ok(s)
    }
}

/// `core/user_<hba>/<name>`.
#[derive(Debug, Clone)]
pub struct UserBackstore {
    hba_dir: PathBuf,
    dir: PathBuf,
}

impl UserBackstore {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Creates the backstore, writes `control` (one token per write, as
    /// rtslib does) and enables it.
    pub fn create(&self, control: &Control) -> Result<()> {
        self.create_with(control, &[])
    }

    /// As `create`, writing these attributes before the device is enabled
    /// (`cmd_time_out`, which a handler reads when it attaches).
    pub fn create_with(&self, control: &Control, attribs: &[(String, String)]) -> Result<()> {
        let s = control.to_control_string()?;
        mkdir(&self.hba_dir)?;
        mkdir(&self.dir)?;
        for tok in s.split(',') {
            write(&self.dir.join("control"), tok)?;
        }
        for (k, v) in attribs {
            self.set_attrib(k, v)?;
        }
        write(&self.dir.join("enable"), "1")
    }

    pub fn enabled(&self) -> Result<bool> {
        Ok(read(&self.dir.join("enable"))? == "1")
    }

    pub fn info(&self) -> Result<String> {
        read(&self.dir.join("info"))
    }

    pub fn attrib(&self, name: &str) -> Result<String> {
        read(&self.attrib_path(name)?)
    }

    /// The file of attribute `name` (for a caller that reads it again and
    /// again).
    pub fn attrib_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.dir.join("attrib").join(component("attribute", name)?))
    }

    pub fn set_attrib(&self, name: &str, value: &str) -> Result<()> {
        write(
            &self.dir.join("attrib").join(component("attribute", name)?),
            value,
        )
    }

    /// The names under `action/` and `attrib/` this kernel offers.
    pub fn actions(&self) -> Vec<String> {
        list(&self.dir.join("action"))
    }

    pub fn attribs(&self) -> Vec<String> {
        list(&self.dir.join("attrib"))
    }

    /// Writes `action/<name>` (block_dev, reset_ring, free_kept_buf).
    pub fn action(&self, name: &str, value: &str) -> Result<()> {
        write(
            &self.dir.join("action").join(component("action", name)?),
            value,
        )
    }

    pub fn set_unit_serial(&self, serial: &str) -> Result<()> {
        write(&self.dir.join("wwn/vpd_unit_serial"), serial)
    }

    /// Removes the backstore (its LUNs must be gone).
    pub fn remove(&self) -> Result<()> {
        rmdir(&self.dir)?;
        // The hba directory goes when empty; another device may still use it.
        if fs::read_dir(&self.hba_dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
        {
            let _ = rmdir(&self.hba_dir);
        }
        Ok(())
    }
}

/// `core/rd_mcp_<hba>/<name>`.
#[derive(Debug, Clone)]
pub struct Ramdisk {
    hba_dir: PathBuf,
    dir: PathBuf,
}

impl Ramdisk {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates a ramdisk of `pages` 4 KiB pages and enables it.
    pub fn create(&self, pages: u64) -> Result<()> {
        mkdir(&self.hba_dir)?;
        mkdir(&self.dir)?;
        write(&self.dir.join("control"), &format!("rd_pages={pages}"))?;
        write(&self.dir.join("enable"), "1")
    }

    pub fn remove(&self) -> Result<()> {
        rmdir(&self.dir)?;
        let _ = rmdir(&self.hba_dir);
        Ok(())
    }
}

/// `core/pscsi_<hba>/<name>`: LIO's in-kernel SCSI passthrough.
#[derive(Debug, Clone)]
pub struct Pscsi {
    hba_dir: PathBuf,
    dir: PathBuf,
}

impl Pscsi {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the backstore over the SCSI device at `addr` (whose node is
    /// `udev_path`, which pscsi requires) and enables it.
    pub fn create(&self, addr: &ScsiAddr, udev_path: &Path) -> Result<()> {
        mkdir(&self.hba_dir)?;
        mkdir(&self.dir)?;
        write(&self.dir.join("udev_path"), &udev_path.to_string_lossy())?;
        write(
            &self.dir.join("control"),
            &format!(
                "scsi_host_id={},scsi_channel_id={},scsi_target_id={},scsi_lun_id={}",
                addr.host, addr.channel, addr.target, addr.lun
            ),
        )?;
        write(&self.dir.join("enable"), "1")
    }

    pub fn remove(&self) -> Result<()> {
        rmdir(&self.dir)?;
        let _ = rmdir(&self.hba_dir);
        Ok(())
    }
}

/// The SCSI address of a LUN as the initiator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiAddr {
    pub host: u32,
    pub channel: u32,
    pub target: u32,
    pub lun: u64,
}

impl std::fmt::Display for ScsiAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.host, self.channel, self.target, self.lun
        )
    }
}

impl std::str::FromStr for ScsiAddr {
    type Err = Error;
    /// Parses `H:C:T:L`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid {
            what: "H:C:T:L",
            value: s.into(),
        };
        let v: Vec<&str> = s.split(':').collect();
        if v.len() != 4 {
            return Err(bad());
        }
        Ok(ScsiAddr {
            host: v[0].parse().map_err(|_| bad())?,
            channel: v[1].parse().map_err(|_| bad())?,
            target: v[2].parse().map_err(|_| bad())?,
            lun: v[3].parse().map_err(|_| bad())?,
        })
    }
}

impl ScsiAddr {
    /// `/dev/sdX` of this LUN, once the initiator has scanned it.
    pub fn block_device(&self, sys: &Path) -> Option<PathBuf> {
        let d = sys.join(format!("class/scsi_device/{self}/device/block"));
        let e = fs::read_dir(d).ok()?.flatten().next()?;
        Some(Path::new("/dev").join(e.file_name()))
    }

    /// `/dev/sgN` of this LUN.
    pub fn sg_device(&self, sys: &Path) -> Option<PathBuf> {
        let d = sys.join(format!("class/scsi_device/{self}/device/scsi_generic"));
        let e = fs::read_dir(d).ok()?.flatten().next()?;
        Some(Path::new("/dev").join(e.file_name()))
    }

    /// Waits for the block device to appear.
    pub fn wait_block_device(&self, sys: &Path, timeout: Duration) -> Result<PathBuf> {
        self.wait_device(sys, timeout, Self::block_device)
    }

    /// Waits for the sg device to appear (a LUN without a block device:
    /// a tape, a changer).
    pub fn wait_sg_device(&self, sys: &Path, timeout: Duration) -> Result<PathBuf> {
        self.wait_device(sys, timeout, Self::sg_device)
    }

    fn wait_device(
        &self,
        sys: &Path,
        timeout: Duration,
        find: fn(&Self, &Path) -> Option<PathBuf>,
    ) -> Result<PathBuf> {
        let t0 = Instant::now();
        loop {
            if let Some(p) = find(self, sys) {
                if p.exists() {
                    return Ok(p);
                }
            }
            if t0.elapsed() > timeout {
                return Err(Error::Timeout(
                    sys.join(format!("class/scsi_device/{self}")),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `loopback/<wwn>`: a tcm_loop target, one SCSI host on the initiator side.
#[derive(Debug, Clone)]
pub struct LoopTarget {
    dir: PathBuf,
}

impl LoopTarget {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn tpg(&self, tpgt: u16) -> PathBuf {
        self.dir.join(format!("tpgt_{tpgt}"))
    }

    /// Creates the target and TPG and its I_T nexus (which must exist
    /// before LUNs are added, or they are never scanned).
    pub fn create(&self, tpgt: u16, initiator_wwn: &str) -> Result<()> {
        let ini = component("initiator wwn", initiator_wwn)?;
        if let Some(parent) = self.dir.parent() {
            mkdir(parent)?;
        }
        mkdir(&self.dir)?;
        let tpg = self.tpg(tpgt);
        mkdir(&tpg)?;
        let nexus = tpg.join("nexus");
        if read(&nexus)
            .map(|s| s.is_empty() || s == "(null)")
            .unwrap_or(true)
        {
            write(&nexus, ini)?;
        }
        Ok(())
    }

    /// Exports `backstore` (a `core/...` directory) as LUN `lun`.
    pub fn add_lun(&self, tpgt: u16, lun: u64, backstore: &Path) -> Result<ScsiAddr> {
        let dir = self.tpg(tpgt).join(format!("lun/lun_{lun}"));
        mkdir(&dir)?;
        let link = dir.join("tcm_loop_port");
        if !link.exists() {
            std::os::unix::fs::symlink(backstore, &link).map_err(io_at(&link))?;
        }
        self.address(tpgt, lun)
    }

    /// The initiator-side address of a LUN (`tpgt_N/address` holds
    /// `<host>:0:<tpgt>`).
    pub fn address(&self, tpgt: u16, lun: u64) -> Result<ScsiAddr> {
        let p = self.tpg(tpgt).join("address");
        let a = read(&p)?;
        let mut it = a.split(':').map(|s| s.trim().parse::<u32>());
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(host)), Some(Ok(channel)), Some(Ok(target))) => Ok(ScsiAddr {
                host,
                channel,
                target,
                lun,
            }),
            _ => Err(Error::Invalid {
                what: "tpg address",
                value: a,
            }),
        }
    }

    pub fn remove_lun(&self, tpgt: u16, lun: u64) -> Result<()> {
        let dir = self.tpg(tpgt).join(format!("lun/lun_{lun}"));
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().is_symlink() {
                    fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                }
            }
        }
        rmdir(&dir)
    }

    /// Removes LUNs, nexus, TPG and target.
    pub fn remove(&self, tpgt: u16) -> Result<()> {
        let tpg = self.tpg(tpgt);
        if let Ok(rd) = fs::read_dir(tpg.join("lun")) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(l) = n.strip_prefix("lun_").and_then(|l| l.parse().ok()) {
                    self.remove_lun(tpgt, l)?;
                }
            }
        }
        if tpg.is_dir() {
            let _ = write(&tpg.join("nexus"), "NULL");
        }
        rmdir(&tpg)?;
        rmdir(&self.dir)
    }
}

/// `iscsi/<iqn>`: an iSCSI target with one TPG.
#[derive(Debug, Clone)]
pub struct IscsiTarget {
    dir: PathBuf,
}

/// What an iSCSI export consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IscsiExport {
    pub tpgt: u16,
    /// `ip:port`, e.g. `127.0.0.1:3260`.
    pub portal: String,
    pub lun: u64,
    /// Initiator IQN given access (an ACL); `None` opens the TPG to any
    /// initiator (generate_node_acls=1, no write protection).
    pub initiator: Option<String>,
}

impl IscsiTarget {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn tpg(&self, tpgt: u16) -> PathBuf {
        self.dir.join(format!("tpgt_{tpgt}"))
    }

    /// Creates target, TPG, portal, LUN and ACL, disables CHAP, enables
    /// the TPG.
    pub fn create(&self, backstore: &Path, e: &IscsiExport) -> Result<()> {
        let portal = component("portal", &e.portal)?;
        if let Some(parent) = self.dir.parent() {
            mkdir(parent)?;
        }
        mkdir(&self.dir)?;
        let tpg = self.tpg(e.tpgt);
        mkdir(&tpg)?;
        mkdir(&tpg.join("np").join(portal))?;
        let lun = tpg.join(format!("lun/lun_{}", e.lun));
        mkdir(&lun)?;
        let link = lun.join("port");
        if !link.exists() {
            std::os::unix::fs::symlink(backstore, &link).map_err(io_at(&link))?;
        }
        write(&tpg.join("attrib/authentication"), "0")?;
        match &e.initiator {
            Some(ini) => {
                let ini = component("initiator iqn", ini)?;
                write(&tpg.join("attrib/generate_node_acls"), "0")?;
                let acl_lun = tpg.join("acls").join(ini).join(format!("lun_{}", e.lun));
                mkdir(&tpg.join("acls").join(ini))?;
                mkdir(&acl_lun)?;
                let l = acl_lun.join("port");
                if !l.exists() {
                    std::os::unix::fs::symlink(&lun, &l).map_err(io_at(&l))?;
                }
            }
            None => {
                write(&tpg.join("attrib/generate_node_acls"), "1")?;
                write(&tpg.join("attrib/demo_mode_write_protect"), "0")?;
            }
        }
        write(&tpg.join("enable"), "1")
    }

    /// Removes ACLs, LUNs, portals, the TPG and the target.
    pub fn remove(&self, tpgt: u16) -> Result<()> {
        let tpg = self.tpg(tpgt);
        if !tpg.is_dir() {
            return rmdir(&self.dir);
        }
        let _ = write(&tpg.join("enable"), "0");
        let subdirs = |p: PathBuf| -> Vec<PathBuf> {
            fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir() && !p.is_symlink())
                        .collect()
                })
                .unwrap_or_default()
        };
        let unlink_all = |dir: &Path| -> Result<()> {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    if e.path().is_symlink() {
                        fs::remove_file(e.path()).map_err(io_at(&e.path()))?;
                    }
                }
            }
            Ok(())
        };
        for acl in subdirs(tpg.join("acls")) {
            for l in subdirs(acl.clone()).into_iter().filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lun_"))
            }) {
                unlink_all(&l)?;
                rmdir(&l)?;
            }
            rmdir(&acl)?;
        }
        for l in subdirs(tpg.join("lun")) {
            unlink_all(&l)?;
            rmdir(&l)?;
        }
        for np in subdirs(tpg.join("np")) {
            rmdir(&np)?;
        }
        rmdir(&tpg)?;
        rmdir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_strings() {
        let c = Control {
            dev_config: "sg//dev/sdb;max_xfer_kb=64".into(),
            dev_size: 1 << 30,
            nl_reply_supported: Some(-1),
            ..Default::default()
        };
        assert_eq!(
            c.to_control_string().unwrap(),
            "dev_config=sg//dev/sdb;max_xfer_kb=64,dev_size=1073741824,nl_reply_supported=-1"
        );
        let c = Control {
            hw_max_sectors: Some(2048),
            max_data_area_mb: Some(64),
            data_pages_per_blk: Some(4),
            ..c
        };
        assert_eq!(
            c.to_control_string().unwrap(),
            "dev_config=sg//dev/sdb;max_xfer_kb=64,dev_size=1073741824,hw_max_sectors=2048,\
             nl_reply_supported=-1,max_data_area_mb=64,data_pages_per_blk=4"
        );
        for bad in ["", "sg", "sg//dev/sdb,dev_size=1", "sg//dev/sd\nb"] {
            let c = Control {
                dev_config: bad.into(),
                ..Default::default()
            };
            assert!(c.to_control_string().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scsi_addresses_parse() {
        let a: ScsiAddr = "2:0:1:3".parse().unwrap();
        assert_eq!((a.host, a.channel, a.target, a.lun), (2, 0, 1, 3));
        assert_eq!(a.to_string(), "2:0:1:3");
        assert!("2:0:1".parse::<ScsiAddr>().is_err());
        assert!("a:0:1:3".parse::<ScsiAddr>().is_err());
    }

    #[test]
    fn iscsi_names_are_checked() {
        let t = Target::at("/nonexistent");
        assert!(t.iscsi("iqn.2003-01.org.linux-iscsi.test:sg").is_ok());
        assert!(t.iscsi("sg-target").is_err());
        assert!(t.iscsi("iqn.x/../y").is_err());
    }

    #[test]
    fn names_are_single_components() {
        let t = Target::at("/nonexistent");
        assert!(t.user_backstore(1, "d0").is_ok());
        for bad in ["", "..", "a/b", "a,b", "a b"] {
            assert!(t.user_backstore(1, bad).is_err(), "{bad:?}");
            assert!(t.loopback(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backstore_and_loop_target_on_a_fake_tree() {
        let root = std::env::temp_dir().join(format!("configfs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("core")).unwrap();
        let t = Target::at(&root);
        assert!(t.available());
        let b = t.user_backstore(3, "d0").unwrap();
        // A plain directory tree stands in for configfs: files are created
        // by the writes; the kernel would create them with mkdir.
        b.create(&Control {
            dev_config: "sg//dev/sdb".into(),
            dev_size: 4096,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(read(&b.path().join("control")).unwrap(), "dev_size=4096");
        assert!(b.enabled().unwrap());
        let l = t.loopback("naa.5001405000000001").unwrap();
        l.create(1, "naa.5001405000000002").unwrap();
        assert_eq!(
            read(&l.path().join("tpgt_1/nexus")).unwrap(),
            "naa.5001405000000002"
        );
        // configfs creates these with the TPG.
        fs::write(l.path().join("tpgt_1/address"), "7:0:1\n").unwrap();
        fs::create_dir(l.path().join("tpgt_1/lun")).unwrap();
        let a = l.add_lun(1, 0, b.path()).unwrap();
        assert_eq!(a.to_string(), "7:0:1:0");
        assert!(l.path().join("tpgt_1/lun/lun_0/tcm_loop_port").is_symlink());
        fs::remove_dir_all(&root).unwrap();
    }
}
