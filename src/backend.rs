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

/// Opens the backing device for SG_IO.
pub fn open(cfg: &DevConfig) -> Result<Backing, BackingError> {
    let r = backing::resolve(&cfg.path, sys())?;
    if crate::mpath::is_dm(&r, sys()) {
        return crate::mpath::open(cfg, &r);
    }
    refuse_a_maps_path(cfg, &r)?;
    backing::open(cfg)
}

/// A disk that a multipath map holds is one path to a unit the map
/// reaches by several (and the map's claim keeps it from being opened
/// exclusively): say which map to give instead.
fn refuse_a_maps_path(cfg: &DevConfig, r: &backing::Resolved) -> Result<(), BackingError> {
    // An sg node's disk: its block device's holders.
    let dev = if r.block {
        r.sysfs(sys())
    } else {
        match std::fs::read_dir(r.sysfs(sys()).join("device/block"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
        {
            Some(e) => e.path(),
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

/// For `check-config` and targetcli's CheckConfig: parses and probes
/// without opening the device for SG_IO.
pub fn check_config(cfg: &str) -> Result<String, String> {
    let c = crate::config::parse(cfg).map_err(|e| e.to_string())?;
    let info = probe(&c).map_err(|e| e.to_string())?;
    Ok(format!("sg: {}", info.describe()))
}
