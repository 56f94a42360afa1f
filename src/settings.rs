//! The daemon's configuration file, `/etc/tcmu-sg/tcmu-sg.toml` (`run
//! --config` to use another): log level and target, the default SG_IO
//! timeout, thread limits, default config-string options, the status
//! socket. Command-line options override it; SIGHUP reloads it, and a file
//! that does not parse is refused with its line and reason while the
//! running settings stay.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/tcmu-sg/tcmu-sg.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub log: Log,
    pub io: Io,
    /// Options for config strings that do not set them.
    pub defaults: crate::config::OptionDefaults,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// stderr, syslog or journald.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Io {
    /// The most SG_IO threads of all devices together.
    pub max_threads: usize,
    /// Microseconds a device's thread keeps checking the ring after work.
    pub poll_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    /// The root-only Unix socket `tcmu-sg status` asks.
    pub socket: PathBuf,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            target: "stderr".into(),
        }
    }
}

impl Default for Io {
    fn default() -> Self {
        Io {
            max_threads: crate::daemon::DEFAULT_MAX_THREADS,
            poll_us: 0,
        }
    }
}

impl Default for Status {
    fn default() -> Self {
        Status {
            socket: PathBuf::from(crate::status::DEFAULT_SOCKET),
        }
    }
}

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    Syslog,
    /// stderr with `<N>` priority prefixes, which journald reads.
    Journald,
}

impl Settings {
    pub fn log_level(&self) -> log::LevelFilter {
        self.log.level.parse().expect("checked by validate")
    }

    pub fn log_target(&self) -> LogTarget {
        match self.log.target.as_str() {
            "syslog" => LogTarget::Syslog,
            "journald" => LogTarget::Journald,
            _ => LogTarget::Stderr,
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        let bad = |section, key, msg: String| Err(Invalid { section, key, msg });
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            return bad(
                "log",
                "level",
                format!(
                    "log.level '{}': expected error, warn, info, debug or trace",
                    self.log.level
                ),
            );
        }
        if !["stderr", "syslog", "journald"].contains(&self.log.target.as_str()) {
            return bad(
                "log",
                "target",
                format!(
                    "log.target '{}': expected stderr, syslog or journald",
                    self.log.target
                ),
            );
        }
        if !(1..=65536).contains(&self.io.max_threads) {
            return bad(
                "io",
                "max_threads",
                format!(
                    "io.max_threads {}: expected 1 to 65536",
                    self.io.max_threads
                ),
            );
        }
        if self.io.poll_us > 1_000_000 {
            return bad(
                "io",
                "poll_us",
                format!("io.poll_us {}: expected 0 to 1000000", self.io.poll_us),
            );
        }
        // Each default must make a valid config string.
        let d = &self.defaults;
        for (key, v) in [
            ("timeout_s", d.timeout_s),
            ("long_timeout_s", d.long_timeout_s),
            ("max_xfer_kb", d.max_xfer_kb),
            ("max_inflight", d.max_inflight),
        ] {
            let Some(v) = v else { continue };
            if let Err(e) = crate::config::parse(&format!("sg//dev/x;{key}={v}")) {
                return bad("defaults", key, format!("defaults: {e}"));
            }
        }
        if !self.status.socket.is_absolute() {
            return bad(
                "status",
                "socket",
                format!(
                    "status.socket '{}': expected an absolute path",
                    self.status.socket.display()
                ),
            );
        }
        Ok(())
    }
}

/// A value that parsed but is out of bounds, and where it is.
struct Invalid {
    section: &'static str,
    key: &'static str,
    msg: String,
}

/// The line (1-based) where `key` is set in `[section]`.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = "";
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            current = name.trim();
        } else if current == section
            && l.strip_prefix(key)
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// The TOML parser's words for a type, in ours.
fn plain(msg: &str) -> String {
    let mut m = msg.replace('\n', " ");
    for t in ["usize", "u64", "u32", "u16", "u8", "i64", "i32"] {
        m = m.replace(&format!("expected {t}"), "expected a whole number");
    }
    m
}

/// Parses settings from TOML text. The error is one line: `line N: why`.
pub fn parse(text: &str) -> Result<Settings, String> {
    let s: Settings = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
        let msg = plain(e.message());
        match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        }
    })?;
    s.validate()
        .map_err(|v| match line_of(text, v.section, v.key) {
            Some(l) => format!("line {l}: {}", v.msg),
            None => v.msg,
        })?;
    Ok(s)
}

/// Reads and parses the file at `path`; a missing file at the default
/// path means the built-in defaults.
pub fn load(path: &Path, required: bool) -> Result<Settings, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse(&t).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Settings::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_to_the_defaults_it_documents() {
        let t = include_str!("../packaging/tcmu-sg.toml");
        let s = parse(t).unwrap();
        assert_eq!(s.log_level(), log::LevelFilter::Info);
        assert_eq!(s.io.max_threads, crate::daemon::DEFAULT_MAX_THREADS);
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn a_full_file() {
        let s = parse(
            "[log]\nlevel = \"debug\"\ntarget = \"journald\"\n[io]\nmax_threads = 64\n\
             [defaults]\ntimeout_s = 10\nmax_inflight = 8\n[status]\nsocket = \"/run/x.sock\"\n",
        )
        .unwrap();
        assert_eq!(s.log_target(), LogTarget::Journald);
        assert_eq!(s.defaults.timeout_s, Some(10));
        assert_eq!(s.io.max_threads, 64);
        assert_eq!(parse("").unwrap(), Settings::default());
    }

    #[test]
    fn malformed_files_are_refused_with_line_and_reason() {
        let e = parse("[log]\nlevel = \"info\"\nlevle = 3\n").unwrap_err();
        assert!(e.starts_with("line 3:") && e.contains("levle"), "{e}");
        let e = parse("[io]\nmax_threads = \"many\"\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse("[log\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse("[io]\nmax_threads = \"many\"\n").unwrap_err();
        assert!(e.ends_with("expected a whole number"), "{e}");
        let e = parse("[log]\ntarget = \"stderr\"\nlevel = \"loud\"\n").unwrap_err();
        assert!(e.starts_with("line 3: log.level 'loud'"), "{e}");
        let e = parse("[io]\npoll_us = 1\n[defaults]\n\n timeout_s = 0\n").unwrap_err();
        assert!(e.starts_with("line 5: defaults: option timeout_s=0"), "{e}");
        assert!(e.contains("expected 1 to 86400 seconds"), "{e}");
        let e = parse("[io]\nmax_threads = 0\n").unwrap_err();
        assert!(e.starts_with("line 2: ") && e.contains("1 to 65536"), "{e}");
        assert!(parse("[io]\nmax_threads = 0\n").is_err());
        let e = parse("[defaults]\npolicy = \"open\"\n").unwrap_err();
        assert!(e.contains("unknown policy 'open'"), "{e}");
        let s = parse("[defaults]\npolicy = \"standard+firmware\"\n").unwrap();
        assert!(s
            .defaults
            .policy
            .unwrap()
            .has(crate::scsi::policy::Grant::Firmware));
        assert!(parse("[status]\nsocket = \"rel.sock\"\n").is_err());
    }
}
