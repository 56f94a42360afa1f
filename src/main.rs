use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tcmu-sg",
    version,
    about = "LIO TCMU passthrough handler: serves user:sg devices with SG_IO"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// error, warn, info, debug or trace.
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
        /// Log to syslog (daemon facility) instead of stderr.
        #[arg(long)]
        syslog: bool,
        /// The most SG_IO threads of all devices together (default 1024;
        /// each device's first thread is outside the bound).
        #[arg(long, alias = "workers")]
        max_threads: Option<usize>,
        /// Do not serve targetcli on the D-Bus system bus.
        #[arg(long)]
        no_dbus: bool,
        /// After serving commands, keep checking each ring this many
        /// microseconds before sleeping (lower latency, more CPU). 0: off.
        #[arg(long, default_value_t = 0)]
        poll_us: u64,
        /// Complete commands in ring order even where the kernel accepts
        /// out-of-order completion (a slow command then holds back the
        /// completions behind it; for comparison).
        #[arg(long)]
        in_order: bool,
    },
    /// Check a config string
    /// (sg/<device>[;max_xfer_kb=N][;timeout_s=N][;max_inflight=N]).
    CheckConfig { cfgstring: String },
    /// Create a user:sg backstore over BACKING and export it through tcm_loop
    /// (the daemon must be running); prints the initiator's block device.
    Export {
        /// Backing SCSI device (/dev/sdX, /dev/sgN, /dev/disk/by-*/...).
        backing: std::path::PathBuf,
        /// Backstore name.
        #[arg(long)]
        name: String,
        /// user_<hba> directory number.
        #[arg(long, default_value_t = 1)]
        hba: u32,
        /// Extra config options, e.g. "max_xfer_kb=64;timeout_s=10".
        #[arg(long)]
        options: Option<String>,
        #[arg(long, default_value_t = 0)]
        lun: u64,
        /// loop (tcm_loop, a local disk) or iscsi.
        #[arg(long, default_value = "loop")]
        fabric: String,
        /// iSCSI portal (ip:port).
        #[arg(long, default_value = "127.0.0.1:3260")]
        portal: String,
        /// iSCSI initiator IQN to give access; default: the one in
        /// /etc/iscsi/initiatorname.iscsi, or any initiator if none.
        #[arg(long)]
        initiator: Option<String>,
        /// Device attribute to set before the LUN is exported (repeatable),
        /// e.g. pgr_support=0 to pass reservations to the backing device.
        #[arg(long = "attrib", value_name = "NAME=VALUE")]
        attribs: Vec<String>,
        /// Ring setting written before the device is enabled (repeatable):
        /// hw_max_sectors, max_data_area_mb or data_pages_per_blk.
        #[arg(long = "control", value_name = "NAME=VALUE")]
        control: Vec<String>,
    },
    /// Print and check the raw entries queued on an unserved device
    /// (diagnostics; the device must not be served by a running daemon).
    #[command(hide = true)]
    RingDump {
        /// Backstore name.
        device: String,
        /// Seconds to wait for an entry.
        #[arg(long, default_value_t = 30)]
        wait: u64,
    },
    /// Change the config string of an existing user:sg backstore.
    SetConfig {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        hba: u32,
        /// sg/<device>[;options] (the sg/ may be left out).
        cfgstring: String,
    },
    /// Remove what export created.
    Unexport {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 1)]
        hba: u32,
    },
}

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(std::io::stderr(), "tcmu-sg[{}]: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static STDERR_LOGGER: StderrLogger = StderrLogger;

fn init_logging(level: log::LevelFilter, use_syslog: bool) -> Result<(), String> {
    if use_syslog {
        let f = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "tcmu-sg".into(),
            pid: std::process::id(),
        };
        let logger = syslog::unix(f).map_err(|e| format!("syslog: {e}"))?;
        log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger)))
            .map_err(|e| e.to_string())?;
    } else {
        log::set_logger(&STDERR_LOGGER).map_err(|e| e.to_string())?;
    }
    log::set_max_level(level);
    Ok(())
}

/// The local open-iscsi initiator name, if configured.
fn local_initiator_name() -> Option<String> {
    let s = std::fs::read_to_string("/etc/iscsi/initiatorname.iscsi").ok()?;
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.trim().strip_prefix("InitiatorName=").map(str::to_string))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { cfgstring } => match tcmu_sg::sg::backing::check_config(&cfgstring) {
            Ok(desc) => {
                println!("{desc}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                println!("{why}");
                ExitCode::from(1)
            }
        },
        Cmd::Export {
            backing,
            name,
            hba,
            options,
            lun,
            fabric,
            portal,
            initiator,
            attribs,
            control,
        } => {
            let fabric = match fabric.as_str() {
                "loop" => tcmu_sg::export::Fabric::Loop,
                "iscsi" => tcmu_sg::export::Fabric::Iscsi {
                    portal,
                    initiator: initiator.or_else(local_initiator_name),
                },
                other => {
                    eprintln!("tcmu-sg export: unknown fabric '{other}' (loop or iscsi)");
                    return ExitCode::from(2);
                }
            };
            let mut pairs = Vec::new();
            for a in attribs {
                let Some((k, v)) = a.split_once('=') else {
                    eprintln!("tcmu-sg export: --attrib {a}: expected NAME=VALUE");
                    return ExitCode::from(2);
                };
                pairs.push((k.to_string(), v.to_string()));
            }
            let spec = tcmu_sg::export::ExportSpec {
                name,
                hba,
                options,
                backing,
                lun,
                fabric,
                attribs: pairs,
                control,
            };
            match tcmu_sg::export::export(&configfs::Target::default(), &spec) {
                Ok(tcmu_sg::export::Exported::Local(dev)) => {
                    println!("{}", dev.display());
                    ExitCode::SUCCESS
                }
                Ok(tcmu_sg::export::Exported::Iscsi(iqn)) => {
                    println!("{iqn}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tcmu-sg export: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::RingDump { device, wait } => {
            match tcmu_sg::inspect::ring_dump(&device, std::time::Duration::from_secs(wait)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    println!("ring-dump: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::SetConfig {
            name,
            hba,
            cfgstring,
        } => {
            match tcmu_sg::export::set_config(&configfs::Target::default(), &name, hba, &cfgstring)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tcmu-sg set-config: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Unexport { name, hba } => {
            match tcmu_sg::export::unexport(&configfs::Target::default(), &name, hba) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tcmu-sg unexport: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Run {
            log_level,
            syslog,
            max_threads,
            no_dbus,
            poll_us,
            in_order,
        } => {
            if let Err(e) = init_logging(log_level, syslog) {
                eprintln!("tcmu-sg: {e}");
                return ExitCode::from(2);
            }
            if let Err(e) = tcmu_sg::sys::install_stop_handlers() {
                log::error!("signals: {e}");
                return ExitCode::from(2);
            }
            let mut opts = tcmu_sg::daemon::Options {
                dbus: !no_dbus,
                poll_spin: std::time::Duration::from_micros(poll_us.min(1_000_000)),
                in_order,
                ..Default::default()
            };
            if let Some(n) = max_threads {
                opts.max_threads = n.clamp(1, 65536);
            }
            log::info!(
                "tcmu-sg {} starting (at most {} SG_IO threads)",
                env!("CARGO_PKG_VERSION"),
                opts.max_threads
            );
            tcmu_sg::daemon::Daemon::new(opts).run();
            ExitCode::SUCCESS
        }
    }
}
