//! Finding and opening TCMU uio devices.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::mapping::Mapping;

/// A TCMU device as named by its uio device:
/// `tcm-user/<hba>/<device>/<cfgstring>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioName {
    pub hba: u32,
    pub device: String,
    /// The config string, starting with the subtype (`sg/...`).
    pub cfg: String,
}

impl UioName {
    pub fn parse(name: &str) -> Option<UioName> {
        let mut it = name.trim_end_matches('\n').splitn(4, '/');
        if it.next()? != "tcm-user" {
            return None;
        }
        let hba = it.next()?.parse().ok()?;
        let device = it.next()?.to_string();
        let cfg = it.next().unwrap_or_default().to_string();
        if device.is_empty() {
            return None;
        }
        Some(UioName { hba, device, cfg })
    }

    pub fn subtype(&self) -> &str {
        self.cfg.split('/').next().unwrap_or_default()
    }

    /// The configfs directory of this device under target/core.
    pub fn configfs_dir(&self) -> String {
        format!("user_{}/{}", self.hba, self.device)
    }
}

/// A uio device found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UioDev {
    /// `uioN`, exactly as in /sys/class/uio (never a prefix match).
    pub uio: String,
    pub name: UioName,
}

/// Lists TCMU devices of `subtype` under `<sys>/class/uio`.
pub fn scan(sys: &Path, subtype: &str) -> Vec<UioDev> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(sys.join("class/uio")) else {
        return out;
    };
    for e in rd.flatten() {
        let uio = e.file_name().to_string_lossy().into_owned();
        if !uio.starts_with("uio") || !uio[3..].bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(raw) = fs::read_to_string(e.path().join("name")) else {
            continue;
        };
        if let Some(name) = UioName::parse(&raw) {
            if name.subtype() == subtype {
                out.push(UioDev { uio, name });
            }
        }
    }
    out.sort_by(|a, b| a.uio.cmp(&b.uio));
    out
}

/// An open uio device with its ring mapped.
pub struct UioDevice {
    file: File,
    pub map: Arc<Mapping>,
}

impl UioDevice {
    pub fn open(sys: &Path, dev: &Path, uio: &str) -> io::Result<UioDevice> {
        let size_s = fs::read_to_string(sys.join(format!("class/uio/{uio}/maps/map0/size")))?;
        let size_s = size_s.trim();
        let size = usize::from_str_radix(size_s.trim_start_matches("0x"), 16).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("map0 size '{size_s}'"))
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(dev.join(uio))?;
        let map = Arc::new(Mapping::map_shared(file.as_raw_fd(), size)?);
        Ok(UioDevice { file, map })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Tells the kernel to process completions (one 4-byte write).
    pub fn kick(&self) -> io::Result<()> {
        crate::sys::write_u32(self.fd(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uio_names() {
        let n = UioName::parse("tcm-user/1/d0/sg//dev/sdb;max_xfer_kb=64\n").unwrap();
        assert_eq!(n.hba, 1);
        assert_eq!(n.device, "d0");
        assert_eq!(n.cfg, "sg//dev/sdb;max_xfer_kb=64");
        assert_eq!(n.subtype(), "sg");
        assert_eq!(n.configfs_dir(), "user_1/d0");
        assert_eq!(
            UioName::parse("tcm-user/2/q/qcow//x.img")
                .unwrap()
                .subtype(),
            "qcow"
        );
        assert!(UioName::parse("uio_pci_generic").is_none());
        assert!(UioName::parse("tcm-user/x/d0/sg//dev/sdb").is_none());
    }

    #[test]
    fn scan_matches_exact_uio_names() {
        let d = std::env::temp_dir().join(format!("tcmu-sg-scan-{}", std::process::id()));
        for (u, name) in [
            ("uio1", "tcm-user/1/a/sg//dev/sda"),
            ("uio10", "tcm-user/1/b/qcow//img"),
            ("uio2x", "tcm-user/1/c/sg//dev/sdc"),
        ] {
            fs::create_dir_all(d.join("class/uio").join(u)).unwrap();
            fs::write(d.join("class/uio").join(u).join("name"), name).unwrap();
        }
        let found = scan(&d, "sg");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].uio, "uio1");
        fs::remove_dir_all(&d).unwrap();
    }
}
