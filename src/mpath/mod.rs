//! A dm-multipath map as the backing device (`sg//dev/mapper/NAME`, or
//! `/dev/dm-N`, or a `/dev/disk/by-id/dm-*` link): the room of its own
//! beside `sg/` that knows maps, their paths and how to probe them.
//!
//! - `map`: the engine. Every command goes down one of the map's paths,
//!   and again down another after a path error, each SG_IO admitted by the
//!   stall rule first.
//! - `verdict`: the one function that tells a path error from the unit's
//!   own answer.
//! - `path`: one path and the three views of its state (tcmu-sg's, the
//!   SCSI device's and ALUA's in sysfs, dm's).
//! - `checker`: a thread per map that follows the map's membership and
//!   states, tells dm of failed paths, and brings paths back.
//! - `pr`: persistent reservations on every path.
//! - `dm`: the device-mapper ioctls (the room's only unsafe code);
//!   `multipathd`: its command socket, for reservation keys.

pub mod checker;
pub mod dm;
pub mod map;
pub mod multipathd;
pub mod path;
pub mod pr;
pub mod verdict;

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use crate::config::{DevConfig, MAX_INFLIGHT};
use crate::sg::backing::{
    self, finish_open, identity, open_node, read_trim, same_unit, Backing, BackingError,
    BackingInfo, Identity, Resolved,
};
use map::{MapEngine, Multipath};
use path::Path;

/// Whether `r` is a device-mapper device.
pub fn is_dm(r: &Resolved, sys: &FsPath) -> bool {
    r.block && r.sysfs(sys).join("dm").exists()
}

/// One path as found at open.
struct Found {
    name: String,
    info: BackingInfo,
    file: File,
    identity: Option<Identity>,
}

/// What a map is made of: its names and the paths that could be opened.
struct Gathered {
    kname: String,
    name: String,
    paths: Vec<Found>,
    /// Paths not used, and why.
    refused: Vec<String>,
    /// The map's size in 512-byte sectors.
    sectors: u64,
}

/// The map at `r`: checks that it is a multipath map and opens its paths
/// (`write`: for SG_IO; else read-only, to check their identity), each
/// probed as a SCSI device with `cfg`'s limits. Paths whose unit differs
/// from the first one's are refused.
fn gather(
    cfg: &DevConfig,
    r: &Resolved,
    sys: &FsPath,
    write: bool,
) -> Result<Gathered, BackingError> {
    let dir = r.sysfs(sys);
    let (kname, name, is_mp, target) = map::identify(&dir);
    if !is_mp {
        return Err(BackingError::NotMultipath {
            path: cfg.path.clone(),
            target: target.unwrap_or_else(|| "non-multipath (its dm uuid says so)".into()),
        });
    }
    let mut slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    slaves.sort();
    if slaves.is_empty() {
        return Err(BackingError::NoPaths(cfg.path.clone()));
    }
    let mut g = Gathered {
        sectors: read_trim(&dir.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        kname,
        name,
        paths: Vec::new(),
        refused: Vec::new(),
    };
    for s in slaves {
        match open_one(cfg, &s, sys, write) {
            Ok(f) => {
                if let Some(first) = g.paths.first() {
                    if !same_unit(&f.identity, &first.identity) {
                        g.refused.push(format!(
                            "{s}: another logical unit ({}) than {} ({})",
                            name_of(&f.identity),
                            first.name,
                            name_of(&first.identity)
                        ));
                        continue;
                    }
                    if f.info.params.block_size != first.info.params.block_size {
                        g.refused.push(format!(
                            "{s}: {}-byte blocks, {} has {}",
                            f.info.params.block_size, first.name, first.info.params.block_size
                        ));
                        continue;
                    }
                }
                g.paths.push(f);
            }
            Err(e) => g.refused.push(format!("{s}: {e}")),
        }
    }
    if g.paths.is_empty() {
        log::debug!(
            "{}: no path of the map could be opened: {}",
            cfg.path.display(),
            g.refused.join("; ")
        );
        return Err(BackingError::NoPaths(cfg.path.clone()));
    }
    Ok(g)
}

fn name_of(id: &Option<Identity>) -> String {
    id.as_ref().map_or("no identity".into(), |i| i.name())
}

fn open_one(cfg: &DevConfig, name: &str, sys: &FsPath, write: bool) -> Result<Found, String> {
    let pcfg = DevConfig {
        path: PathBuf::from("/dev").join(name),
        ..cfg.clone()
    };
    let info = backing::probe(&pcfg, sys).map_err(|e| e.to_string())?;
    let file = if write {
        open_node(&info, false).map_err(|e| e.to_string())?
    } else {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&info.node)
            .map_err(|e| format!("{}: {e}", info.node.display()))?
    };
    let identity = identity(std::os::fd::AsRawFd::as_raw_fd(&file));
    Ok(Found {
        name: name.to_string(),
        info,
        file,
        identity,
    })
}

/// What tcmu-sg serves of a map: the first path's class and identity,
/// the map's size, the smallest transfer limit of its paths, their queue
/// depths together, the longest transport recovery among them.
fn info_of(g: &Gathered) -> BackingInfo {
    let first = &g.paths[0].info;
    let bs = first.params.block_size.max(1);
    let mut info = first.clone();
    info.node = PathBuf::from("/dev").join(&g.kname);
    info.sg_node = None;
    info.block = true;
    info.blocks = g.sectors * 512 / bs as u64;
    info.params.max_bytes = g
        .paths
        .iter()
        .map(|p| p.info.params.max_bytes)
        .min()
        .unwrap_or(0);
    info.queue_depth = g
        .paths
        .iter()
        .map(|p| p.info.queue_depth)
        .sum::<u32>()
        .min(MAX_INFLIGHT);
    info.queueing = g
        .paths
        .iter()
        .map(|p| p.info.queueing)
        .max()
        .unwrap_or_default();
    info.paths = g.paths.iter().map(|p| p.name.clone()).collect();
    info
}

/// Probes a map without opening it for SG_IO (check-config, export).
pub fn probe(cfg: &DevConfig, r: &Resolved, sys: &FsPath) -> Result<BackingInfo, BackingError> {
    let g = gather(cfg, r, sys, false)?;
    Ok(info_of(&g))
}

/// Opens a map: its paths for SG_IO, the map itself with O_EXCL, and its
/// checker.
pub fn open(cfg: &DevConfig, r: &Resolved) -> Result<Backing, BackingError> {
    let sys = FsPath::new("/sys");
    let g = gather(cfg, r, sys, true)?;
    let info = info_of(&g);
    for why in &g.refused {
        log::warn!("{}: path not used: {why}", cfg.path.display());
    }
    let excl = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_EXCL)
        .open(&info.node)
        .map_err(|err| BackingError::Io {
            path: info.node.clone(),
            err,
        })?;
    let mut m = Multipath::new(
        g.name.clone(),
        g.kname.clone(),
        sys.to_path_buf(),
        g.paths[0].identity.clone(),
    );
    m.max_bytes = info.params.max_bytes;
    m.block_size = info.params.block_size;
    for f in g.paths {
        let dev = read_trim(&sys.join("block").join(&f.name).join("dev")).unwrap_or_default();
        m.add_path(Path::new(f.name, dev, f.file, f.info.queueing));
    }
    let engine = MapEngine::new(Arc::new(m), excl);
    Ok(finish_open(cfg, info, Box::new(engine)))
}

/// Opens a path that joined the map after it was opened: the same unit,
/// blocks and at least the map's transfer limit, or it is not used.
pub fn open_path(m: &Multipath, name: &str) -> Result<Path, String> {
    let cfg = DevConfig {
        path: PathBuf::from("/dev").join(name),
        max_xfer_kb: None,
        timeout_s: None,
        long_timeout_s: None,
        max_inflight: None,
        // The map's params (and its policy) are the ones commands use.
        policy: Default::default(),
    };
    let f = open_one(&cfg, name, &m.sys, true)?;
    if !same_unit(&f.identity, &m.identity) {
        return Err(format!(
            "another logical unit ({}) than the map's ({})",
            name_of(&f.identity),
            name_of(&m.identity)
        ));
    }
    if f.info.params.block_size != m.block_size {
        return Err(format!(
            "{}-byte blocks, the map has {}",
            f.info.params.block_size, m.block_size
        ));
    }
    if f.info.params.max_bytes < m.max_bytes {
        return Err(format!(
            "takes at most {} KiB a command, less than the map's {} KiB (export the \
             device again, or set max_xfer_kb, to use it)",
            f.info.params.max_bytes / 1024,
            m.max_bytes / 1024
        ));
    }
    let dev = read_trim(&m.sys.join("block").join(name).join("dev")).unwrap_or_default();
    Ok(Path::new(f.name, dev, f.file, f.info.queueing))
}
