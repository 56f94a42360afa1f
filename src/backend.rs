//! The backing device a config string names: the one place that decides
//! which engine serves it (`sg::engine`).

use std::path::Path;

use crate::config::DevConfig;
use crate::sg::backing::{self, Backing, BackingError, BackingInfo};

fn sys() -> &'static Path {
    Path::new("/sys")
}

/// Inspects the backing device without opening it for SG_IO.
pub fn probe(cfg: &DevConfig) -> Result<BackingInfo, BackingError> {
    let r = backing::resolve(&cfg.path, sys())?;
    backing::probe_resolved(cfg, &r, sys())
}

/// Opens the backing device for SG_IO.
pub fn open(cfg: &DevConfig) -> Result<Backing, BackingError> {
    backing::open(cfg)
}

/// For `check-config` and targetcli's CheckConfig: parses and probes
/// without opening the device for SG_IO.
pub fn check_config(cfg: &str) -> Result<String, String> {
    let c = crate::config::parse(cfg).map_err(|e| e.to_string())?;
    let info = probe(&c).map_err(|e| e.to_string())?;
    Ok(format!("sg: {}", info.describe()))
}
