//! The device configuration string: `sg/<backing device>[;key=value...]`.
//!
//! It comes from configfs (written by whoever created the backstore) and is
//! treated as hostile: bounded length, printable ASCII only, an absolute
//! path under /dev, known options with range-checked values.

use std::path::PathBuf;

use crate::scsi::policy::Policy;

/// The largest `timeout_s` and `long_timeout_s`: a day (a tape's long
/// ERASE takes hours).
pub const MAX_TIMEOUT_S: u32 = 86_400;
pub const MAX_CFG_LEN: usize = 1024;
/// The largest `max_inflight` (SCSI queue depths stop well below).
pub const MAX_INFLIGHT: u32 = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevConfig {
    /// The backing device as given.
    pub path: PathBuf,
    /// Caps the bytes of one command sent to the backing device.
    pub max_xfer_kb: Option<u32>,
    /// SG_IO timeout of every command, in seconds (default: by device
    /// class and opcode, `scsi::timeouts`).
    pub timeout_s: Option<u32>,
    /// SG_IO timeout of a tape's, changer's or MMC drive's long operations
    /// (REWIND, LOCATE, ERASE, MOVE MEDIUM, ...), in seconds.
    pub long_timeout_s: Option<u32>,
    /// Caps the commands in flight at the backing device (default: its
    /// queue depth).
    pub max_inflight: Option<u32>,
    /// The command policy (`policy=`, default `standard`) and read-only
    /// mode (`readonly=1`).
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config string is empty")]
    Empty,
    #[error("config string is longer than {MAX_CFG_LEN} bytes")]
    TooLong,
    #[error("config string contains a non-printable or non-ASCII character")]
    BadChar,
    #[error("handler '{0}' is not sg (expected sg/<device>, e.g. sg//dev/sdb)")]
    Subtype(String),
    #[error("'{0}' names no backing device (expected sg/<device>, e.g. sg//dev/sdb)")]
    NoDevice(String),
    #[error("backing device '{0}' is not an absolute path under /dev")]
    Path(String),
    #[error("unknown option '{0}' (known: max_xfer_kb, timeout_s, long_timeout_s, max_inflight, policy, readonly)")]
    UnknownOption(String),
    #[error("option '{0}' needs a value (key=value)")]
    MissingValue(String),
    #[error("option {key}={value}: {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("option '{0}' given twice")]
    Duplicate(String),
    #[error("option policy={value}: {why}")]
    Policy { value: String, why: String },
}

fn number(
    key: &str,
    value: &str,
    min: u32,
    max: u32,
    why: &'static str,
) -> Result<u32, ConfigError> {
    let bad = || ConfigError::BadValue {
        key: key.into(),
        value: value.into(),
        why,
    };
    let n: u32 = value.parse().map_err(|_| bad())?;
    if !(min..=max).contains(&n) {
        return Err(bad());
    }
    Ok(n)
}

/// Values for the options a config string leaves unset (the daemon's
/// settings file, `[defaults]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptionDefaults {
    /// The command policy of a device whose string sets none
    /// (`scsi::policy`; `standard` when unset).
    #[serde(deserialize_with = "policy_setting")]
    pub policy: Option<Policy>,
    /// SG_IO timeout of every command in seconds (by device class when
    /// unset).
    pub timeout_s: Option<u32>,
    /// SG_IO timeout of long tape/changer/MMC operations in seconds.
    pub long_timeout_s: Option<u32>,
    pub max_xfer_kb: Option<u32>,
    pub max_inflight: Option<u32>,
}

fn policy_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Policy>, D::Error> {
    let s: String = serde::Deserialize::deserialize(d)?;
    Policy::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// Parses a config string. A leading `sg/` is expected (as in the uio name
/// and in targetcli's CheckConfig); a bare `/dev/...` is accepted too.
pub fn parse(cfg: &str) -> Result<DevConfig, ConfigError> {
    parse_with(cfg, &OptionDefaults::default())
}

/// As `parse`, with `d` for the options the string does not set.
pub fn parse_with(cfg: &str, d: &OptionDefaults) -> Result<DevConfig, ConfigError> {
    if cfg.is_empty() {
        return Err(ConfigError::Empty);
    }
    if cfg.len() > MAX_CFG_LEN {
        return Err(ConfigError::TooLong);
    }
    if !cfg.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(ConfigError::BadChar);
    }
    let rest = if let Some(r) = cfg.strip_prefix("sg/") {
        r
    } else if cfg.starts_with('/') {
        cfg
    } else if cfg == "sg" {
        return Err(ConfigError::NoDevice(cfg.into()));
    } else {
        let sub = cfg.split('/').next().unwrap_or_default();
        return Err(ConfigError::Subtype(sub.into()));
    };
    let mut parts = rest.split(';');
    let path = parts.next().unwrap_or_default().trim();
    if !path.starts_with("/dev/") || path.len() <= 5 || path.split('/').any(|c| c == "..") {
        return Err(ConfigError::Path(path.into()));
    }
    let mut c = DevConfig {
        path: PathBuf::from(path),
        max_xfer_kb: d.max_xfer_kb,
        timeout_s: d.timeout_s,
        long_timeout_s: d.long_timeout_s,
        max_inflight: d.max_inflight,
        policy: d.policy.unwrap_or_default(),
    };
    let mut seen = Vec::new();
    for opt in parts {
        let opt = opt.trim();
        if opt.is_empty() {
            continue;
        }
        let (k, v) = opt
            .split_once('=')
            .ok_or_else(|| ConfigError::MissingValue(opt.into()))?;
        if seen.contains(&k) {
            return Err(ConfigError::Duplicate(k.into()));
        }
        seen.push(k);
        match k {
            "max_xfer_kb" => {
                c.max_xfer_kb = Some(number(k, v, 4, 1 << 20, "expected 4 to 1048576 KiB")?);
            }
            "timeout_s" => {
                c.timeout_s = Some(number(
                    k,
                    v,
                    1,
                    MAX_TIMEOUT_S,
                    "expected 1 to 86400 seconds",
                )?);
            }
            "long_timeout_s" => {
                c.long_timeout_s = Some(number(
                    k,
                    v,
                    1,
                    MAX_TIMEOUT_S,
                    "expected 1 to 86400 seconds",
                )?);
            }
            "max_inflight" => {
                c.max_inflight = Some(number(k, v, 1, MAX_INFLIGHT, "expected 1 to 1024")?);
            }
            "policy" => {
                let readonly = c.policy.readonly;
                c.policy = Policy::parse(v).map_err(|why| ConfigError::Policy {
                    value: v.into(),
                    why,
                })?;
                c.policy.readonly = readonly;
            }
            "readonly" => {
                c.policy.readonly = match v {
                    "1" => true,
                    "0" => false,
                    _ => {
                        return Err(ConfigError::BadValue {
                            key: k.into(),
                            value: v.into(),
                            why: "expected 0 or 1",
                        })
                    }
                };
            }
            _ => return Err(ConfigError::UnknownOption(k.into())),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_strings() {
        let c = parse("sg//dev/sdb").unwrap();
        assert_eq!(c.path, PathBuf::from("/dev/sdb"));
        assert_eq!((c.max_xfer_kb, c.timeout_s), (None, None));
        let c = parse("sg//dev/disk/by-id/wwn-0x5000;max_xfer_kb=64;timeout_s=5").unwrap();
        assert_eq!(c.path, PathBuf::from("/dev/disk/by-id/wwn-0x5000"));
        assert_eq!((c.max_xfer_kb, c.timeout_s), (Some(64), Some(5)));
        let c = parse("sg//dev/sg3;long_timeout_s=7200;timeout_s=86400").unwrap();
        assert_eq!((c.timeout_s, c.long_timeout_s), (Some(86400), Some(7200)));
        assert_eq!(
            parse("sg//dev/sdb;max_inflight=4").unwrap().max_inflight,
            Some(4)
        );
        assert_eq!(parse("/dev/sg3").unwrap().path, PathBuf::from("/dev/sg3"));
    }

    #[test]
    fn a_bare_handler_name_says_what_is_missing() {
        assert_eq!(parse("sg"), Err(ConfigError::NoDevice("sg".into())));
        assert!(parse("sg").unwrap_err().to_string().contains("sg//dev/sdb"));
        assert_eq!(parse("rbd/x"), Err(ConfigError::Subtype("rbd".into())));
    }

    #[test]
    fn policy_and_readonly() {
        use crate::scsi::policy::{Grant, Level};
        let c = parse("sg//dev/sdb").unwrap();
        assert_eq!(
            (c.policy.level, c.policy.readonly),
            (Level::Standard, false)
        );
        let c = parse("sg//dev/sdb;policy=full").unwrap();
        assert_eq!(c.policy, Policy::FULL);
        let c = parse("sg//dev/sdb;readonly=1;policy=standard+firmware+ata").unwrap();
        assert!(c.policy.readonly && c.policy.has(Grant::Firmware) && c.policy.has(Grant::Ata));
        let c = parse("sg//dev/sdb;policy=full;readonly=1").unwrap();
        assert_eq!((c.policy.level, c.policy.readonly), (Level::Full, true));
        // The settings file's default, and a string that overrides it.
        let d = OptionDefaults {
            policy: Some(Policy::FULL),
            ..OptionDefaults::default()
        };
        assert_eq!(parse_with("sg//dev/sdb", &d).unwrap().policy, Policy::FULL);
        let c = parse_with("sg//dev/sdb;policy=standard", &d).unwrap();
        assert_eq!(c.policy.level, Level::Standard);
        let e = parse("sg//dev/sdb;policy=standard+fw")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown grant 'fw' (known: firmware,"), "{e}");
        let e = parse("sg//dev/sdb;readonly=yes").unwrap_err().to_string();
        assert!(e.contains("expected 0 or 1"), "{e}");
    }

    #[test]
    fn defaults_fill_what_the_string_leaves_unset() {
        let d = OptionDefaults {
            policy: None,
            timeout_s: Some(7),
            long_timeout_s: Some(3600),
            max_xfer_kb: Some(256),
            max_inflight: None,
        };
        let c = parse_with("sg//dev/sdb;timeout_s=3", &d).unwrap();
        assert_eq!(
            (c.timeout_s, c.long_timeout_s, c.max_xfer_kb, c.max_inflight),
            (Some(3), Some(3600), Some(256), None)
        );
        let c = parse_with("sg//dev/sdb", &OptionDefaults::default()).unwrap();
        assert_eq!(c.timeout_s, None);
    }

    #[test]
    fn hostile_strings() {
        let bad = [
            "",
            "qcow//dev/sdb",
            "sg/dev/sdb",
            "sg//etc/passwd",
            "sg//dev/../etc/passwd",
            "sg//dev/",
            "sg//dev/sdb;max_xfer_kb",
            "sg//dev/sdb;max_xfer_kb=0",
            "sg//dev/sdb;max_xfer_kb=-1",
            "sg//dev/sdb;max_xfer_kb=99999999999",
            "sg//dev/sdb;timeout_s=0",
            "sg//dev/sdb;timeout_s=86401",
            "sg//dev/sdb;long_timeout_s=0",
            "sg//dev/sdb;colour=blue",
            "sg//dev/sdb;timeout_s=1;timeout_s=2",
            "sg//dev/sdb;max_inflight=0",
            "sg//dev/sdb;max_inflight=1025",
            "sg//dev/sdb;policy=open",
            "sg//dev/sdb;policy=full+vendor",
            "sg//dev/sdb;readonly=2",
            "sg//dev/sdb;policy=full;policy=standard",
            "sg//dev/sd\u{7}b",
            "sg//dev/sdé",
        ];
        for s in bad {
            assert!(parse(s).is_err(), "{s:?} accepted");
        }
        assert_eq!(
            parse(&format!("sg//dev/{}", "a".repeat(2000))),
            Err(ConfigError::TooLong)
        );
        assert_eq!(
            parse("sg//dev/sdb;colour=blue"),
            Err(ConfigError::UnknownOption("colour".into()))
        );
    }
}
