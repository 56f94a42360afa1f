//! Opening a backing SCSI device: resolve `/dev/sdX`, `/dev/sgN` and
//! `/dev/disk/by-*` links to the block node where one exists (the block
//! layer maps SG_IO iovecs without a copy; sg copies through kernel
//! buffers), and read the device's limits from sysfs. A dm-multipath map
//! is opened by `mpath`, which probes each of its paths here.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::linux::fs::MetadataExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{DevConfig, MAX_INFLIGHT};
use crate::passthrough::DeviceParams;
use crate::scsi::direction::DeviceClass;
use crate::scsi::policy::Family;
use crate::scsi::timeouts::{Reported, Timeouts};
use crate::sg::engine::{Disk, Engine};

#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}: not a device node (a regular file or directory cannot be passed through)")]
    NotDevice(PathBuf),
    #[error("{0}: not a SCSI device (no scsi_device in sysfs)")]
    NotScsi(PathBuf),
    #[error(
        "{path}: a {driver} node; tcmu-sg sends the commands through the same \
         device's SCSI generic node: use {sg} (sg/{sg})"
    )]
    UseSgNode {
        path: PathBuf,
        driver: String,
        sg: String,
    },
    #[error(
        "{path}: a device-mapper device with a {target} table; of device-mapper \
         devices only dm-multipath maps can be served (give the map, or one SCSI disk)"
    )]
    NotMultipath { path: PathBuf, target: String },
    #[error("{path}: {why}")]
    Map { path: PathBuf, why: String },
    #[error("{0}: the multipath map has no paths (yet)")]
    NoPaths(PathBuf),
    #[error(
        "{path}: in use ({holders}); tcmu-sg opens a disk exclusively so that nothing \
         mounts it under the initiator: release it (unmount it, remove it from LVM or md, \
         or blacklist it in multipath.conf and give the map instead); the daemon retries \
         a busy disk every 2 s"
    )]
    Busy { path: PathBuf, holders: String },
    #[error(
        "{0}: Operation not permitted; as root this is a device access list: under \
         systemd the unit's is fixed when it starts, from the drivers loaded then \
         (the packaged unit loads sd_mod, sg, dm_mod and target_core_user first; for \
         another driver add a DeviceAllow= drop-in), so restart it (systemctl restart \
         tcmu-sg)"
    )]
    Denied(PathBuf),
    #[error(
        "{path}: the LUN {served} itself exports (tcm_loop, {lun}): every command sent \
         to it would come back to this device and wait on itself; give the node of the \
         disk it is to serve (a name such as /dev/sdc passes to another disk when the \
         one that had it goes: /dev/disk/by-id names stay)"
    )]
    OwnLun {
        path: PathBuf,
        served: String,
        lun: String,
    },
    #[error("{0}: is a partition; pass the whole disk")]
    Partition(PathBuf),
    #[error("{path}: bad sysfs value in {file}")]
    Sysfs { path: PathBuf, file: String },
}

impl BackingError {
    /// The path leads nowhere (yet): no such file, or a node whose device
    /// is gone. At boot a disk can appear after its handler is up.
    pub fn is_absent(&self) -> bool {
        match self {
            BackingError::Io { err, .. } => {
                err.kind() == std::io::ErrorKind::NotFound
                    || matches!(err.raw_os_error(), Some(libc::ENXIO | libc::ENODEV))
            }
            BackingError::NoPaths(_) => true,
            _ => false,
        }
    }

    /// Something else holds the disk; it may let go of it.
    pub fn is_busy(&self) -> bool {
        matches!(self, BackingError::Busy { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackingError + '_ {
    move |err| BackingError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// What tcmu-sg learned about a backing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingInfo {
    /// The node SG_IO is issued on.
    pub node: PathBuf,
    /// Its sg node, if any (for logs).
    pub sg_node: Option<PathBuf>,
    /// True when `node` is a block device (zero-copy SG_IO).
    pub block: bool,
    pub peripheral_type: u8,
    pub vendor: String,
    pub model: String,
    /// Capacity in logical blocks (0 when unknown, e.g. tapes).
    pub blocks: u64,
    pub params: DeviceParams,
    /// The SCSI device's queue depth (sysfs `device/queue_depth`).
    pub queue_depth: u32,
    /// How long an SG_IO can wait in the node's queue before its timeout
    /// starts: the transport's recovery timeout (see [`transport_queueing`]).
    pub queueing: Duration,
    /// A map's paths (`sdX`), empty for a single device.
    pub paths: Vec<String>,
}

impl BackingInfo {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}{}) {} {} type {:#x}, {} x {}-byte blocks, max transfer {} KiB, queue depth {}{}{}, policy {}",
            self.node.display(),
            if !self.paths.is_empty() {
                format!("multipath map over {}", self.paths.join(", "))
            } else if self.block {
                "block".to_string()
            } else {
                "sg".to_string()
            },
            self.sg_node
                .as_ref()
                .map(|s| format!(", {}", s.display()))
                .unwrap_or_default(),
            self.vendor,
            self.model,
            self.peripheral_type,
            self.blocks,
            self.params.block_size,
            self.params.max_bytes / 1024,
            self.queue_depth,
            if self.block {
                ""
            } else {
                ", copied through sg"
            },
            if self.queueing.is_zero() {
                String::new()
            } else {
                format!(
                    ", transport recovery up to {} s",
                    self.queueing.as_secs()
                )
            },
            self.params.policy.describe(),
        )
    }
}

/// When sysfs has no queue depth for a device.
const DEFAULT_QUEUE_DEPTH: u32 = 32;
/// sg allows this many commands in flight per open file.
const SG_MAX_QUEUE: u32 = 16;

/// What identifies a logical unit across re-opens of its path: its device
/// identification VPD page (0x83), else its unit serial number page (0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub page: u8,
    pub bytes: Vec<u8>,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VPD {:#04x} ", self.page)?;
        for b in self.bytes.iter().take(32) {
            write!(f, "{b:02x}")?;
        }
        if self.bytes.len() > 32 {
            write!(f, "...")?;
        }
        Ok(())
    }
}

impl Identity {
    /// What names the logical unit itself, whichever port it is reached
    /// through: page 0x83's designators with association 0 (a path's
    /// page also names its target port and port group, which differ from
    /// path to path); page 0x80 whole. Paths of a map must agree on it.
    pub fn unit(&self) -> Vec<u8> {
        if self.page != 0x83 {
            return self.bytes.clone();
        }
        let mut out = Vec::new();
        let mut d = self.bytes.as_slice();
        while d.len() >= 4 {
            let Some(desc) = d.get(..4 + d[3] as usize) else {
                break;
            };
            if (desc[1] >> 4) & 3 == 0 {
                out.extend_from_slice(desc);
            }
            d = &d[desc.len()..];
        }
        out
    }

    /// The unit's name as storage tools print it: from page 0x83 the
    /// logical unit's NAA (`naa.<hex>`), EUI-64 (`eui.<hex>`), SCSI name
    /// string or T10 vendor designator (`t10.<text>`), in that order of
    /// preference; from page 0x80 the serial number. The page dump when
    /// none is found.
    pub fn name(&self) -> String {
        // Device-supplied text goes to terminals: printable words only.
        let text = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .split(|c: char| c.is_whitespace() || c.is_control())
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        if self.page == 0x80 {
            let t = text(&self.bytes);
            return if t.is_empty() { self.to_string() } else { t };
        }
        // Designation descriptors: 4-byte header, then `len` bytes.
        let mut best: Option<(u8, String)> = None;
        let mut d = self.bytes.as_slice();
        while d.len() >= 4 {
            let len = d[3] as usize;
            let Some(body) = d.get(4..4 + len) else { break };
            let (assoc, kind) = ((d[1] >> 4) & 3, d[1] & 0x0f);
            d = &d[4 + len..];
            if assoc != 0 || body.is_empty() {
                continue;
            }
            let (rank, name) = match kind {
                3 => (0, format!("naa.{}", hex(body))),
                2 => (1, format!("eui.{}", hex(body))),
                8 => (2, text(body)),
                1 => (3, format!("t10.{}", text(body))),
                _ => continue,
            };
            if best.as_ref().is_none_or(|(r, _)| rank < *r) {
                best = Some((rank, name));
            }
        }
        best.map_or_else(|| self.to_string(), |(_, n)| n)
    }
}

/// Whether two identities name the same logical unit (whichever ports
/// they were read through; see [`Identity::unit`]).
pub fn same_unit(a: &Option<Identity>, b: &Option<Identity>) -> bool {
    a.as_ref().map(Identity::unit) == b.as_ref().map(Identity::unit)
}

/// Reads the identity of the unit behind `fd` (INQUIRY, EVPD).
pub fn identity(fd: i32) -> Option<Identity> {
    const LEN: usize = 1024;
    let mut buf = vec![0u8; LEN];
    for page in [0x83u8, 0x80] {
        buf.fill(0);
        let cdb = [0x12, 0x01, page, (LEN >> 8) as u8, LEN as u8, 0];
        let r = crate::sg::io::sg_io_in(fd, &cdb, &mut buf, 5000);
        if r.errno != 0 || r.status != 0 || r.host_status != 0 || buf[1] != page {
            continue;
        }
        let got = LEN - (r.resid.max(0) as usize).min(LEN);
        let end = (4 + u16::from_be_bytes([buf[2], buf[3]]) as usize).min(got);
        if end > 4 {
            return Some(Identity {
                page,
                bytes: buf[4..end].to_vec(),
            });
        }
    }
    None
}

/// The command timeouts a tape, changer or MMC drive reports (REPORT
/// SUPPORTED OPERATION CODES, all commands, with RCTD); empty if it
/// reports none.
pub fn reported_timeouts(fd: i32) -> Reported {
    const LEN: usize = 16 << 10;
    let mut buf = vec![0u8; LEN];
    let mut cdb = [0u8; 12];
    cdb[0] = 0xa3;
    cdb[1] = 0x0c;
    cdb[2] = 0x80; // RCTD, reporting options 000b: all commands
    cdb[6..10].copy_from_slice(&(LEN as u32).to_be_bytes());
    let r = crate::sg::io::sg_io_in(fd, &cdb, &mut buf, 10_000);
    if r.errno != 0 || r.status != 0 || r.host_status != 0 {
        return Reported::default();
    }
    let got = LEN - (r.resid.max(0) as usize).min(LEN);
    Reported::parse(&buf[..got])
}

/// An open backing device.
#[derive(Debug)]
pub struct Backing {
    /// What sends its commands: one device's node, or a map's paths.
    pub engine: Box<dyn Engine>,
    pub info: BackingInfo,
    /// SG_IO timeouts by opcode.
    pub timeouts: Timeouts,
    /// `max_inflight` from the config string, if given.
    pub max_inflight: Option<u32>,
    /// The config it was opened with (to open it again).
    pub cfg: DevConfig,
    /// The unit's identity when it was opened, if it has one.
    pub identity: Option<Identity>,
}

impl Backing {
    /// How long an SG_IO may wait in a queue before its timeout starts
    /// (see [`Engine::queueing`]); part of the stall rule's SG_IO bound.
    pub fn queueing(&self) -> Duration {
        self.engine.queueing()
    }

    /// The SG_IO timeout of a command with this opcode.
    pub fn timeout_for(&self, opcode: u8) -> std::time::Duration {
        self.timeouts.for_opcode(opcode)
    }

    /// The kernel's floor for an SG_IO timeout on the node served.
    pub fn sg_floor(&self) -> std::time::Duration {
        if self.info.block {
            crate::expiry::BLOCK_SG_FLOOR
        } else {
            std::time::Duration::ZERO
        }
    }

    /// How many commands may be in flight at once: the device's queue
    /// depth, lowered by `max_inflight`, and at most sg's per-file limit
    /// when driven through an sg node.
    pub fn max_inflight(&self) -> usize {
        let mut n = self.info.queue_depth;
        if let Some(m) = self.max_inflight {
            n = n.min(m);
        }
        if !self.info.block {
            n = n.min(SG_MAX_QUEUE);
        }
        n.max(1) as usize
    }
}

/// The name of the first entry of a sysfs directory that holds one link
/// or node (`device/scsi_generic`, `device/block`), if it has any.
pub(crate) fn first_entry(dir: &Path) -> Option<std::ffi::OsString> {
    fs::read_dir(dir).ok()?.next()?.ok().map(|e| e.file_name())
}

pub(crate) fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_num(dir: &Path, file: &str, dev: &Path) -> Result<u64, BackingError> {
    read_trim(&dir.join(file))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BackingError::Sysfs {
            path: dev.to_path_buf(),
            file: file.into(),
        })
}

/// A backing path resolved to its node: what it is, for `probe` and for
/// `mpath` to tell a map from a SCSI device.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The node the path leads to (`/dev/sdb`, `/dev/dm-3`, ...).
    pub real: PathBuf,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
}

impl Resolved {
    /// The node's directory under `sys` (`dev/block/M:m` or `dev/char/M:m`).
    pub fn sysfs(&self, sys: &Path) -> PathBuf {
        sys.join(format!(
            "dev/{}/{}:{}",
            if self.block { "block" } else { "char" },
            self.major,
            self.minor
        ))
    }
}

/// Follows `given` (a link under /dev) to its device node.
pub fn resolve(given: &Path, sys: &Path) -> Result<Resolved, BackingError> {
    let real = fs::canonicalize(given).map_err(io_err(given))?;
    if !real.starts_with("/dev/") && sys == Path::new("/sys") {
        return Err(BackingError::NotDevice(given.to_path_buf()));
    }
    let md = fs::metadata(&real).map_err(io_err(given))?;
    let ft = md.file_type();
    if !ft.is_block_device() && !ft.is_char_device() {
        return Err(BackingError::NotDevice(given.to_path_buf()));
    }
    let rdev = md.st_rdev();
    Ok(Resolved {
        real,
        block: ft.is_block_device(),
        major: libc::major(rdev),
        minor: libc::minor(rdev),
    })
}

/// How long an SG_IO can wait in the queue of the SCSI device at
/// `scsi_dev` (its sysfs `device` directory) before its timeout starts.
/// While a transport recovers a lost session it blocks the device's queue:
/// a command submitted then is not started, so its timeout does not run,
/// until the session is back (the command then reaches the device, late)
/// or the transport gives up (iSCSI: `recovery_tmo`, the initiator's
/// `replacement_timeout`; FC: `fast_io_fail_tmo`, else `dev_loss_tmo`).
/// Zero for transports without such a wait (SAS, tcm_loop, virtio).
pub fn transport_queueing(scsi_dev: &Path, sys: &Path) -> Duration {
    let Ok(real) = scsi_dev.canonicalize() else {
        return Duration::ZERO;
    };
    let secs = |p: PathBuf| read_trim(&p).and_then(|v| v.parse::<u64>().ok());
    for c in real.components() {
        let c = c.as_os_str().to_string_lossy();
        if c.starts_with("session") {
            let tmo = secs(
                sys.join("class/iscsi_session")
                    .join(&*c)
                    .join("recovery_tmo"),
            );
            return Duration::from_secs(tmo.unwrap_or(120));
        }
        if c.starts_with("rport-") {
            let d = sys.join("class/fc_remote_ports").join(&*c);
            let tmo = secs(d.join("fast_io_fail_tmo")).or_else(|| secs(d.join("dev_loss_tmo")));
            return Duration::from_secs(tmo.unwrap_or(60));
        }
    }
    Duration::ZERO
}

/// Resolves and inspects the backing device of `cfg` without opening it.
/// `sys` is the sysfs root (`/sys` outside tests).
pub fn probe(cfg: &DevConfig, sys: &Path) -> Result<BackingInfo, BackingError> {
    let r = resolve(&cfg.path, sys)?;
    probe_resolved(cfg, &r, sys)
}

/// [`probe`] of a path already resolved.
pub fn probe_resolved(
    cfg: &DevConfig,
    r: &Resolved,
    sys: &Path,
) -> Result<BackingInfo, BackingError> {
    let given = &cfg.path;
    let real = &r.real;
    let (blockdir, sg_dir) = if r.block {
        let d = r.sysfs(sys);
        if d.join("partition").exists() {
            return Err(BackingError::Partition(given.clone()));
        }
        let sg = first_entry(&d.join("device/scsi_generic"))
            .map(|n| sys.join("class/scsi_generic").join(n));
        (Some(d), sg)
    } else {
        let d = r.sysfs(sys);
        let subsystem = fs::read_link(d.join("subsystem")).ok();
        let subsystem = subsystem.as_ref().and_then(|s| s.file_name());
        if subsystem != Some("scsi_generic".as_ref()) {
            // A tape's st node or a changer's ch node: its SCSI device
            // has an sg node, which is the one to give.
            let sg = first_entry(&d.join("device/scsi_generic"))
                .map(|n| format!("/dev/{}", n.to_string_lossy()));
            if let (Some(sg), Some(driver)) = (sg, subsystem) {
                return Err(BackingError::UseSgNode {
                    path: given.clone(),
                    driver: driver.to_string_lossy().into_owned(),
                    sg,
                });
            }
            return Err(BackingError::NotScsi(given.clone()));
        }
        let blk = first_entry(&d.join("device/block")).map(|n| sys.join("class/block").join(n));
        (blk, Some(d))
    };
    let scsi_dev = blockdir
        .as_ref()
        .or(sg_dir.as_ref())
        .map(|d| d.join("device"))
        .expect("one of the two is set");
    if !scsi_dev.join("scsi_device").exists() {
        return Err(BackingError::NotScsi(given.clone()));
    }
    let peripheral_type = read_num(&scsi_dev, "type", given)? as u8;
    let queue_depth = read_num(&scsi_dev, "queue_depth", given).map_or(DEFAULT_QUEUE_DEPTH, |q| {
        q.clamp(1, MAX_INFLIGHT as u64) as u32
    });
    let vendor = read_trim(&scsi_dev.join("vendor")).unwrap_or_default();
    let model = read_trim(&scsi_dev.join("model")).unwrap_or_default();
    let name = |d: &PathBuf| {
        d.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| Path::new("/dev").join(n)))
    };
    let sg_node = sg_dir.as_ref().and_then(name);
    let class = DeviceClass::from_peripheral_type(peripheral_type);
    let family = Family::from_peripheral_type(peripheral_type);
    let (node, block, params, blocks) = if let Some(bd) = &blockdir {
        let q = bd.join("queue");
        let bs = read_num(&q, "logical_block_size", given)? as u32;
        let hw = read_num(&q, "max_hw_sectors_kb", given)? * 1024;
        let segs = read_num(&q, "max_segments", given)?.clamp(1, 1024);
        // Data-area pages are not physically contiguous: one segment each.
        let mut max = hw.min(segs * 4096);
        if let Some(kb) = cfg.max_xfer_kb {
            max = max.min(kb as u64 * 1024);
        }
        let bsu = bs.max(1) as u64;
        max = (max / bsu * bsu).max(bsu);
        let sectors = read_num(bd, "size", given)?;
        let node = name(bd).unwrap_or_else(|| real.clone());
        (
            node,
            true,
            DeviceParams {
                class,
                block_size: bs,
                max_bytes: max,
                family,
                policy: cfg.policy,
            },
            sectors * 512 / bsu,
        )
    } else {
        // An sg-only device (tape, changer): the limit comes from BLKSECTGET
        // on the sg node, which reports bytes there.
        let f = File::open(real).map_err(io_err(given))?;
        let mut max = crate::sg::io::blksectget(f.as_raw_fd())
            .unwrap_or(65536)
            .max(512);
        if let Some(kb) = cfg.max_xfer_kb {
            max = max.min(kb as u64 * 1024);
        }
        (
            real.clone(),
            false,
            DeviceParams {
                class,
                block_size: 512,
                max_bytes: max,
                family,
                policy: cfg.policy,
            },
            0,
        )
    };
    Ok(BackingInfo {
        node,
        sg_node,
        block,
        peripheral_type,
        vendor,
        model,
        blocks,
        params,
        queue_depth,
        queueing: transport_queueing(&scsi_dev, sys),
        paths: Vec::new(),
    })
}

/// Opens the node `info` describes for SG_IO. `exclusive`: a block node
/// is opened with O_EXCL, so that nothing mounts the disk under the
/// initiator's feet (a map's paths are held by the map and opened without).
pub fn open_node(info: &BackingInfo, exclusive: bool) -> Result<File, BackingError> {
    let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if info.block && exclusive {
        flags |= libc::O_EXCL;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(&info.node)
        .map_err(io_err(&info.node))
}

/// Probes and opens a single SCSI device (see [`open_node`]).
pub fn open(cfg: &DevConfig) -> Result<Backing, BackingError> {
    let info = probe(cfg, Path::new("/sys"))?;
    let file = open_node(&info, true)?;
    let queueing = info.queueing;
    Ok(finish_open(cfg, info, Box::new(Disk { file, queueing })))
}

/// A [`Backing`] around an open engine: reads the unit's identity and,
/// for a device that reports them, its command timeouts.
pub fn finish_open(cfg: &DevConfig, info: BackingInfo, engine: Box<dyn Engine>) -> Backing {
    let fd = engine.query_fd();
    let identity = identity(fd);
    let mut timeouts = timeouts_of(cfg, info.params.class);
    if timeouts.asks_the_device() {
        timeouts.reported = reported_timeouts(fd);
    }
    Backing {
        engine,
        info,
        timeouts,
        max_inflight: cfg.max_inflight,
        cfg: cfg.clone(),
        identity,
    }
}

/// The timeouts a config string sets for a device of this class (before
/// asking the device for its own).
pub fn timeouts_of(cfg: &DevConfig, class: DeviceClass) -> Timeouts {
    let secs = |t: Option<u32>| t.map(|t| std::time::Duration::from_secs(t as u64));
    Timeouts::new(class, secs(cfg.timeout_s), secs(cfg.long_timeout_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(p: &str) -> DevConfig {
        crate::config::parse(p).unwrap()
    }

    #[test]
    fn identity_names_prefer_the_logical_unit_naa() {
        // scsi_debug's page 0x83: T10 vendor id, NAA of the LU, then a
        // target port designator (association 1), which must not win.
        let mut b = vec![0x02, 0x01, 0x00, 0x0c];
        b.extend_from_slice(b"Linux   sd 1");
        b.extend_from_slice(&[
            0x01, 0x03, 0x00, 0x08, 0x33, 0x33, 0x33, 0x30, 0, 0, 0x07, 0xd0,
        ]);
        b.extend_from_slice(&[0x01, 0x13, 0x00, 0x08, 0x52, 0x22, 0x22, 0x22, 0, 0, 0, 1]);
        let id = |page, bytes: &[u8]| Identity {
            page,
            bytes: bytes.to_vec(),
        };
        assert_eq!(id(0x83, &b).name(), "naa.33333330000007d0");
        // Without the NAA: the T10 designator, blanks collapsed.
        assert_eq!(id(0x83, &b[..16]).name(), "t10.Linux sd 1");
        // A descriptor longer than the page ends the walk, no panic.
        assert_eq!(
            id(0x83, &[0x01, 0x03, 0x00, 0x20, 1]).name(),
            "VPD 0x83 0103002001"
        );
        assert_eq!(id(0x80, b"  SER123  ").name(), "SER123");
        // The unit's own designators: the target port's are left out.
        let unit = id(0x83, &b).unit();
        assert_eq!(unit.len(), 16 + 12);
        let mut other_port = b.clone();
        other_port[b.len() - 1] = 2; // relative target port 2
        assert_eq!(id(0x83, &other_port).unit(), unit);
        assert_ne!(id(0x83, &other_port), id(0x83, &b));
        assert_eq!(id(0x80, b"SER\x1b[2J123\0").name(), "SER [2J123");
    }

    #[test]
    fn a_tape_or_changer_node_is_refused_naming_its_sg_node() {
        // /dev/null (char 1:3) stands for /dev/nst0 in a sysfs of our own.
        let sys = std::env::temp_dir().join(format!("tcmu-sg-sys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&sys);
        let d = sys.join("dev/char/1:3");
        fs::create_dir_all(d.join("device/scsi_generic/sg7")).unwrap();
        fs::create_dir_all(sys.join("class/scsi_tape")).unwrap();
        std::os::unix::fs::symlink(sys.join("class/scsi_tape"), d.join("subsystem")).unwrap();
        let e = probe(&cfg("sg//dev/null"), &sys).unwrap_err();
        fs::remove_dir_all(&sys).unwrap();
        assert!(matches!(e, BackingError::UseSgNode { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("a scsi_tape node") && e.contains("use /dev/sg7"),
            "{e}"
        );
    }

    #[test]
    fn regular_files_and_directories_are_refused() {
        let e = probe(&cfg("/dev/null"), Path::new("/sys")).unwrap_err();
        assert!(matches!(e, BackingError::NotScsi(_)), "{e}");
        let e = probe(&cfg("/dev/shm"), Path::new("/sys"));
        assert!(matches!(
            e,
            Err(BackingError::NotDevice(_)) | Err(BackingError::Io { .. })
        ));
        let e = probe(&cfg("/dev/does-not-exist"), Path::new("/sys")).unwrap_err();
        assert!(matches!(e, BackingError::Io { .. }), "{e}");
        assert!(e.is_absent());
        let e = probe(&cfg("/dev/null"), Path::new("/sys")).unwrap_err();
        assert!(!e.is_absent());
    }
}
