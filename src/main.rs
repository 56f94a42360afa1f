use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use tcmu_sg::settings::{self, LogTarget, Settings};

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
    Run(RunArgs),
    /// Show what the running daemon is doing: one row per device (uio,
    /// LIO name, backing device, state, in flight, IOPS, MB/s, latency,
    /// errors).
    Status {
        /// The daemon's report as JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// The Prometheus text exposition (for node_exporter's textfile
        /// collector).
        #[arg(long)]
        prometheus: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        /// The daemon's status socket (default: `[status] socket` of the
        /// settings file, else /run/tcmu-sg/status.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The settings file whose `[status] socket` to use.
        #[arg(long, default_value = settings::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Before LIO's saved configuration is restored: give every user:sg
    /// backstore in it nl_reply_supported=-1 in its saved control string,
    /// so that tcmu-runner's answer cannot fail it (the packaged drop-in
    /// for rtslib-fb-targetctl.service runs this before the restore).
    PrepareRestore {
        /// Saved configurations to prepare (default: those targetctl
        /// reads, /etc/rtslib-fb-target/saveconfig.json and
        /// /etc/target/saveconfig.json, where they exist).
        files: Vec<PathBuf>,
    },
    /// Write the man pages (tcmu-sg.8 and one per subcommand) into DIR.
    #[command(hide = true)]
    GenMan { dir: PathBuf },
    /// Print a shell completion script (bash, zsh, fish).
    #[command(hide = true)]
    GenCompletions { shell: clap_complete::Shell },
    /// Check a config string
    /// (sg/<device>[;max_xfer_kb=N][;timeout_s=N][;long_timeout_s=N][;max_inflight=N]
    /// [;policy=full|standard[+GRANT...]][;readonly=1]).
    CheckConfig {
        /// Taken as raw bytes, so that non-UTF-8 input gets our own
        /// one-line answer.
        cfgstring: std::ffi::OsString,
    },
    /// Create a user:sg backstore over BACKING and export it through tcm_loop
    /// or iSCSI (the daemon must be running); prints what the initiator
    /// uses: a tcm_loop disk's node (a tape's or changer's sg node), or the
    /// iSCSI target's IQN.
    Export(ExportArgs),
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

#[derive(Args)]
struct RunArgs {
    /// The settings file (TOML); command-line options override it.
    #[arg(long, default_value = tcmu_sg::settings::DEFAULT_PATH)]
    config: PathBuf,
    /// error, warn, info, debug or trace (default: the settings file's,
    /// else info).
    #[arg(long)]
    log_level: Option<log::LevelFilter>,
    /// stderr, syslog or journald (stderr with priority prefixes).
    #[arg(long)]
    log_target: Option<String>,
    /// Log to syslog (daemon facility): --log-target syslog.
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
    #[arg(long)]
    poll_us: Option<u64>,
    /// Complete commands in ring order even where the kernel accepts
    /// out-of-order completion (a slow command then holds back the
    /// completions behind it; for comparison).
    #[arg(long)]
    in_order: bool,
    /// The Unix socket `tcmu-sg status` asks (default: the settings
    /// file's, else /run/tcmu-sg/status.sock).
    #[arg(long)]
    status_socket: Option<PathBuf>,
}

/// How `export` makes the LUN reachable.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FabricKind {
    /// tcm_loop: a local SCSI disk.
    Loop,
    /// LIO's iSCSI target.
    Iscsi,
}

#[derive(Args)]
struct ExportArgs {
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
    #[arg(long, value_enum, default_value_t = FabricKind::Loop)]
    fabric: FabricKind,
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
}

/// Logs to stderr: `tcmu-sg[LEVEL]: message`, or with journald's
/// `<priority>` prefixes.
struct StderrLogger {
    journald: AtomicBool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let mut e = std::io::stderr().lock();
        let _ = if self.journald.load(Ordering::Relaxed) {
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(e, "<{prio}>{}", r.args())
        } else {
            writeln!(e, "tcmu-sg[{}]: {}", r.level(), r.args())
        };
    }
    fn flush(&self) {}
}

static STDERR_LOGGER: StderrLogger = StderrLogger {
    journald: AtomicBool::new(false),
};

fn init_logging(level: log::LevelFilter, target: LogTarget) -> Result<(), String> {
    match target {
        LogTarget::Syslog => {
            let f = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_DAEMON,
                hostname: None,
                process: "tcmu-sg".into(),
                pid: std::process::id(),
            };
            let logger = syslog::unix(f).map_err(|e| format!("syslog: {e}"))?;
            log::set_boxed_logger(Box::new(syslog::BasicLogger::new(logger)))
                .map_err(|e| e.to_string())?;
        }
        LogTarget::Journald | LogTarget::Stderr => {
            STDERR_LOGGER
                .journald
                .store(target == LogTarget::Journald, Ordering::Relaxed);
            log::set_logger(&STDERR_LOGGER).map_err(|e| e.to_string())?;
        }
    }
    log::set_max_level(level);
    Ok(())
}

/// `tcmu-sg status`: one report, or one per second with --watch.
fn status(json: bool, prometheus: bool, watch: bool, socket: &std::path::Path) -> ExitCode {
    loop {
        let r = match tcmu_sg::status::fetch(socket) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tcmu-sg status: {e}");
                if prometheus {
                    // A textfile collector's file then says the daemon is
                    // down instead of keeping its last figures.
                    print!("{}", tcmu_sg::status::daemon_up(false));
                }
                return ExitCode::from(1);
            }
        };
        let text = if json {
            serde_json::to_string_pretty(&r).expect("a report serializes") + "\n"
        } else if prometheus {
            tcmu_sg::status::prometheus(&r)
        } else {
            tcmu_sg::status::table(&r)
        };
        if watch {
            // Clear the screen and home the cursor.
            print!("\x1b[2J\x1b[H");
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
        if !watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// The local open-iscsi initiator name, if configured.
fn local_initiator_name() -> Option<String> {
    let s = std::fs::read_to_string("/etc/iscsi/initiatorname.iscsi").ok()?;
    s.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.trim().strip_prefix("InitiatorName=").map(str::to_string))
}

/// Says what failed; exit code 1.
fn failed(cmd: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tcmu-sg {cmd}: {e}");
    ExitCode::from(1)
}

fn check_config(cfgstring: std::ffi::OsString) -> ExitCode {
    match cfgstring
        .into_string()
        .map_err(|_| tcmu_sg::config::ConfigError::BadChar.to_string())
        .and_then(|s| tcmu_sg::backend::check_config(&s))
    {
        Ok(desc) => {
            println!("{desc}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("{why}");
            ExitCode::from(1)
        }
    }
}

fn export(a: ExportArgs) -> ExitCode {
    let fabric = match a.fabric {
        FabricKind::Loop => tcmu_sg::export::Fabric::Loop,
        FabricKind::Iscsi => tcmu_sg::export::Fabric::Iscsi {
            portal: a.portal,
            initiator: a.initiator.or_else(local_initiator_name),
        },
    };
    let mut attribs = Vec::new();
    for kv in a.attribs {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("tcmu-sg export: --attrib {kv}: expected NAME=VALUE");
            return ExitCode::from(2);
        };
        attribs.push((k.to_string(), v.to_string()));
    }
    let spec = tcmu_sg::export::ExportSpec {
        name: a.name,
        hba: a.hba,
        options: a.options,
        backing: a.backing,
        lun: a.lun,
        fabric,
        attribs,
        control: a.control,
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
        Err(e) => failed("export", e),
    }
}

/// `tcmu-sg prepare-restore`: one line per backstore changed.
fn prepare_restore(files: Vec<PathBuf>) -> ExitCode {
    let files = if files.is_empty() {
        tcmu_sg::restore::SAVE_FILES
            .iter()
            .map(PathBuf::from)
            .collect()
    } else {
        files
    };
    let mut rc = ExitCode::SUCCESS;
    for f in &files {
        match tcmu_sg::restore::prepare_file(f) {
            Ok(changed) => {
                for name in changed {
                    println!(
                        "{}: user:sg backstore {name}: nl_reply_supported=-1 added to its \
                         control string",
                        f.display()
                    );
                }
            }
            Err(e) => rc = failed("prepare-restore", e),
        }
    }
    rc
}

/// The man pages: clap's sections (the help subcommand left out, it has
/// no page), then the reference that `--help` does not hold: the config
/// string, settings, signals, files and exit status on tcmu-sg(8) and
/// tcmu-sg-run(8), the exit status on the others.
fn gen_man(dir: &std::path::Path) -> ExitCode {
    const DAEMON: &str = include_str!("../packaging/man/daemon.roff");
    const COMMAND: &str = include_str!("../packaging/man/command.roff");
    let write = |cmd: clap::Command, name: &str| -> std::io::Result<()> {
        let mut f = std::fs::File::create(dir.join(format!("{name}.8")))?;
        let man = clap_mangen::Man::new(cmd.clone()).section("8");
        man.render_title(&mut f)?;
        man.render_name_section(&mut f)?;
        man.render_synopsis_section(&mut f)?;
        man.render_description_section(&mut f)?;
        if cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(&mut f)?;
        }
        if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
            man.render_subcommands_section(&mut f)?;
        }
        let extra = if name == "tcmu-sg" || name == "tcmu-sg-run" {
            DAEMON
        } else {
            COMMAND
        };
        f.write_all(extra.as_bytes())?;
        if cmd.get_version().is_some() {
            man.render_version_section(&mut f)?;
        }
        Ok(())
    };
    let cli = Cli::command().disable_help_subcommand(true);
    let mut r = std::fs::create_dir_all(dir).and_then(|_| write(cli.clone(), "tcmu-sg"));
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("tcmu-sg-{}", sub.get_name());
        r = r.and_then(|_| write(sub.clone().name(name.clone()), &name));
    }
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed("gen-man", e),
    }
}

/// `tcmu-sg run`: the settings file, overridden by the command line (now
/// and at every SIGHUP reload), then the daemon until SIGTERM.
fn run(a: RunArgs) -> ExitCode {
    let RunArgs {
        config,
        log_level,
        log_target,
        syslog,
        max_threads,
        no_dbus,
        poll_us,
        in_order,
        status_socket,
    } = a;
    // The file at the default path may be absent; one named on the
    // command line must exist.
    let required = config != std::path::Path::new(settings::DEFAULT_PATH);
    let file = match settings::load(&config, required) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcmu-sg: {e}");
            return ExitCode::from(2);
        }
    };
    let apply_cli = move |mut s: Settings| -> Result<Settings, String> {
        if let Some(l) = log_level {
            s.log.level = l.to_string().to_lowercase();
        }
        if syslog {
            s.log.target = "syslog".into();
        }
        if let Some(t) = &log_target {
            s.log.target = t.clone();
        }
        if let Some(n) = max_threads {
            s.io.max_threads = n;
        }
        if let Some(p) = poll_us {
            s.io.poll_us = p;
        }
        if let Some(p) = &status_socket {
            s.status.socket = p.clone();
        }
        settings::parse(&toml_of(&s)).map_err(|e| format!("command line: {e}"))
    };
    let s = match apply_cli(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcmu-sg: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(s.log_level(), s.log_target()) {
        eprintln!("tcmu-sg: {e}");
        return ExitCode::from(2);
    }
    let missing = std::fs::read_to_string("/proc/self/status")
        .map(|s| tcmu_sg::sys::missing_capabilities(&s))
        .unwrap_or_default();
    if !missing.is_empty() {
        log::error!(
            "tcmu-sg run needs CAP_SYS_RAWIO (SG_IO) and CAP_NET_ADMIN (TCM-USER events) \
             and lacks {}: run it as root (sudo tcmu-sg run) or through the packaged unit \
             (systemctl start tcmu-sg)",
            missing.join(" and ")
        );
        return ExitCode::from(1);
    }
    if !tcmu_sg::sys::limit_malloc_arenas(2) {
        log::warn!("malloc arenas not bounded (mallopt refused M_ARENA_MAX)");
    }
    match tcmu_sg::sys::raise_fd_limit() {
        Ok(n) => log::debug!("open files: up to {n}"),
        Err(e) => log::warn!("open files: cannot raise the limit ({e})"),
    }
    if let Err(e) = tcmu_sg::sys::install_stop_handlers() {
        log::error!("signals: {e}");
        return ExitCode::from(2);
    }
    let target = s.log.target.clone();
    let reload_path = config.clone();
    let reload: tcmu_sg::daemon::Reloader = Box::new(move || {
        let n = settings::load(&reload_path, required).and_then(&apply_cli)?;
        if n.log.target != target {
            log::warn!("log.target changes at the next start");
        }
        Ok(tcmu_sg::daemon::Reloaded {
            log_level: n.log_level(),
            max_threads: n.io.max_threads,
            defaults: n.defaults,
        })
    });
    let opts = tcmu_sg::daemon::Options {
        dbus: !no_dbus,
        poll_spin: std::time::Duration::from_micros(s.io.poll_us),
        in_order,
        max_threads: s.io.max_threads,
        defaults: s.defaults,
        status_socket: Some(s.status.socket.clone()),
        reload: Some(reload),
        ..Default::default()
    };
    log::info!(
        "tcmu-sg {} starting (settings {}; at most {} SG_IO threads)",
        env!("CARGO_PKG_VERSION"),
        config.display(),
        opts.max_threads
    );
    tcmu_sg::daemon::Daemon::new(opts).run();
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let target = configfs::Target::default;
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Status {
            json,
            prometheus,
            watch,
            socket,
            config,
        } => {
            let socket = match socket {
                Some(s) => s,
                None => {
                    let required = config != std::path::Path::new(settings::DEFAULT_PATH);
                    match settings::load(&config, required) {
                        Ok(s) => s.status.socket,
                        Err(e) => return failed("status", e),
                    }
                }
            };
            status(json, prometheus, watch, &socket)
        }
        Cmd::CheckConfig { cfgstring } => check_config(cfgstring),
        Cmd::Export(a) => export(a),
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
        } => tcmu_sg::export::set_config(&target(), &name, hba, &cfgstring)
            .map_or_else(|e| failed("set-config", e), |()| ExitCode::SUCCESS),
        Cmd::Unexport { name, hba } => tcmu_sg::export::unexport(&target(), &name, hba)
            .map_or_else(|e| failed("unexport", e), |()| ExitCode::SUCCESS),
        Cmd::PrepareRestore { files } => prepare_restore(files),
        Cmd::GenMan { dir } => gen_man(&dir),
        Cmd::GenCompletions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tcmu-sg",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

/// The TOML text of settings (to run command-line values through the same
/// checks as the file's).
fn toml_of(s: &Settings) -> String {
    let opt = |k: &str, v: Option<u32>| v.map(|v| format!("{k} = {v}\n")).unwrap_or_default();
    format!(
        "[log]\nlevel = {:?}\ntarget = {:?}\n[io]\nmax_threads = {}\npoll_us = {}\n\
         [defaults]\n{}{}{}{}{}[status]\nsocket = {:?}\n",
        s.log.level,
        s.log.target,
        s.io.max_threads,
        s.io.poll_us,
        opt("timeout_s", s.defaults.timeout_s),
        opt("long_timeout_s", s.defaults.long_timeout_s),
        opt("max_xfer_kb", s.defaults.max_xfer_kb),
        opt("max_inflight", s.defaults.max_inflight),
        s.defaults
            .policy
            .map(|p| format!("policy = {:?}\n", p.describe()))
            .unwrap_or_default(),
        s.status.socket.display().to_string(),
    )
}
