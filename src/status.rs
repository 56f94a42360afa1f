//! `tcmu-sg status`: the report the running daemon hands out on its
//! root-only Unix socket, and its renderings (a table, JSON, the Prometheus
//! text exposition for node_exporter's textfile collector).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::{Counters, LAT_BUCKETS};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/tcmu-sg/status.sock";

/// What the daemon reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// SG_IO threads of all devices now, and the daemon-wide bound.
    pub threads: usize,
    pub max_threads: usize,
    /// The interval the `last` counters of each device cover.
    pub interval_s: f64,
    pub devices: Vec<DeviceReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceReport {
    /// `uioN`.
    pub uio: String,
    /// The LIO backstore: `user_<hba>/<name>`.
    pub name: String,
    pub config: String,
    /// The backing device as configured, the node SG_IO goes to, and what
    /// identifies it.
    pub backing: String,
    pub node: String,
    pub identity: String,
    /// `serving`, `not ready` or `re-opening`, and why.
    pub state: String,
    pub state_detail: String,
    /// The most commands in flight now allowed, and the crew's threads.
    pub max_inflight: usize,
    pub threads: usize,
    /// LIO's `cmd_time_out` (0: never), the SG_IO timeout used, and how
    /// long a command may wait before it is refused as possibly failed
    /// back (none without `cmd_time_out`; see `crate::expiry`).
    pub cmd_time_out_s: u64,
    pub sg_timeout_s: f64,
    pub stale_window_s: Option<f64>,
    /// Since the device was attached.
    pub counters: Counters,
    /// Over the last interval.
    pub last: Counters,
    /// A multipath map's paths and failovers (none for a single device).
    pub multipath: Option<MapReport>,
    /// The command policy and read-only mode (`scsi::policy`).
    pub policy: String,
}

/// A dm-multipath backing device (see `mpath`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MapReport {
    /// dm's name of the map.
    pub name: String,
    /// Whether dm's view of the paths could be read.
    pub dm_view: String,
    /// How dm learns of a path tcmu-sg found failed.
    pub dm_told_by: String,
    /// dm's table queues I/O when no path is left (tcmu-sg does not send
    /// through dm, so this never holds its commands).
    pub queue_if_no_path: Option<bool>,
    /// SG_IOs sent again down another path after a path error.
    pub retries: u64,
    /// Paths taken out of use after a path error, and brought back.
    pub failovers: u64,
    pub reinstated: u64,
    /// Commands that found no usable path for as long as they could wait.
    pub no_path: u64,
    /// The reservation key the initiator registered through the map.
    pub reservation_key: Option<String>,
    pub paths: Vec<PathReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PathReport {
    /// `sdX` and `major:minor`.
    pub name: String,
    pub dev: String,
    /// `active`, `failed`, `returning`, `registering`, `dm-failed`,
    /// `offline` or `standby`.
    pub state: String,
    /// dm's view: `active`, `failed` or `unknown`.
    pub dm: String,
    pub commands: u64,
    pub errors: u64,
    /// Why it is out of use, and since when.
    pub why: String,
}

impl DeviceReport {
    pub fn iops(&self, interval_s: f64) -> f64 {
        per_s(self.last.done, interval_s)
    }

    pub fn read_mbps(&self, interval_s: f64) -> f64 {
        per_s(self.last.read_bytes, interval_s) / 1e6
    }

    pub fn write_mbps(&self, interval_s: f64) -> f64 {
        per_s(self.last.written_bytes, interval_s) / 1e6
    }
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Asks the daemon listening on `socket` for its report.
pub fn fetch(socket: &Path) -> Result<Report, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is `tcmu-sg run` up, and are you root?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"status\n").map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    serde_json::from_str(&buf).map_err(|e| format!("bad report from the daemon: {e}"))
}

fn us(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(u) if u >= 10_000 => format!("{}ms", u / 1000),
        Some(u) => format!("{u}us"),
    }
}

/// One row per device.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "tcmu-sg {} pid {} up {:.0} s, {} devices, {} of {} threads; rates over the last {:.1} s\n",
        r.version,
        r.pid,
        r.uptime_s,
        r.devices.len(),
        r.threads,
        r.max_threads,
        r.interval_s
    );
    let _ = writeln!(
        out,
        "{:<7} {:<16} {:<20} {:<28} {:<20} {:>5} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "UIO",
        "NAME",
        "BACKING",
        "IDENTITY",
        "STATE",
        "INFLT",
        "IOPS",
        "RD MB/s",
        "WR MB/s",
        "P50",
        "P99",
        "ERRORS",
        "STALE"
    );
    for d in &r.devices {
        let state = if d.state_detail.is_empty() {
            d.state.clone()
        } else {
            format!("{} ({})", d.state, d.state_detail)
        };
        let _ = writeln!(
            out,
            "{:<7} {:<16} {:<20} {:<28} {:<20} {:>5} {:>8.0} {:>8.1} {:>8.1} {:>7} {:>7} {:>7} {:>7}",
            d.uio,
            cut(&d.name, 16),
            cut(&d.backing, 20),
            cut(&d.identity, 28),
            cut(&state, 20),
            d.counters.in_flight,
            d.iops(r.interval_s),
            d.read_mbps(r.interval_s),
            d.write_mbps(r.interval_s),
            us(d.last.latency_percentile_us(50.0)),
            us(d.last.latency_percentile_us(99.0)),
            d.counters.errors(),
            d.counters.stale_refused,
        );
        if let Some(m) = &d.multipath {
            let _ = writeln!(
                out,
                "        map {}: {} path retries, {} failovers, {} reinstated{}{}",
                m.name,
                m.retries,
                m.failovers,
                m.reinstated,
                m.reservation_key
                    .as_ref()
                    .map(|k| format!(", reservation key {k}"))
                    .unwrap_or_default(),
                if m.dm_view == "read" {
                    String::new()
                } else {
                    format!(", dm's view {}", m.dm_view)
                }
            );
            for p in &m.paths {
                let _ = writeln!(
                    out,
                    "          path {:<8} {:<8} {:<12} dm {:<8} {:>10} commands {:>6} errors{}",
                    p.name,
                    p.dev,
                    p.state,
                    p.dm,
                    p.commands,
                    p.errors,
                    if p.why.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", p.why)
                    }
                );
            }
        }
        let refused = d.counters.policy_refused + d.counters.readonly_refused;
        if refused > 0 || d.policy.contains("read-only") || d.policy.contains('+') {
            let _ = writeln!(
                out,
                "        policy {}: {} refused by the policy, {} by read-only",
                d.policy, d.counters.policy_refused, d.counters.readonly_refused
            );
        }
    }
    out
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `tcmu_sg_up`: 1 when the daemon answered, 0 when it did not (then the
/// whole exposition, so a textfile collector's file says the daemon is
/// down rather than keeping its last figures).
pub fn daemon_up(up: bool) -> String {
    format!(
        "# HELP tcmu_sg_up 1 while the tcmu-sg daemon answers on its status socket.\n\
         # TYPE tcmu_sg_up gauge\ntcmu_sg_up {}\n",
        u8::from(up)
    )
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn prometheus(r: &Report) -> String {
    let mut o = daemon_up(true);
    let _ = writeln!(
        o,
        "# HELP tcmu_sg_build_info 1, labelled with the daemon's version.\n\
         # TYPE tcmu_sg_build_info gauge\ntcmu_sg_build_info{{version=\"{}\"}} 1",
        label(&r.version)
    );
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(
            o,
            "# HELP tcmu_sg_{name} {help}\n# TYPE tcmu_sg_{name} {kind}"
        );
    };
    family(
        "device_up",
        "gauge",
        "1 while the device is served by its backing device.",
    );
    family("commands_total", "counter", "Commands completed.");
    family("in_flight", "gauge", "Commands running now.");
    family("bytes_total", "counter", "Bytes moved, by direction.");
    family("status_total", "counter", "Completions by SCSI status.");
    family(
        "check_condition_total",
        "counter",
        "CHECK CONDITION by sense key.",
    );
    family(
        "split_commands_total",
        "counter",
        "Commands split into chunks.",
    );
    family("chunks_total", "counter", "Chunks of split commands.");
    family(
        "transport_errors_total",
        "counter",
        "SG_IO calls failed in the ioctl or transport.",
    );
    family("tmr_total", "counter", "Task management notifications.");
    family("ring_resets_total", "counter", "Ring resets on attach.");
    family(
        "backing_lost_total",
        "counter",
        "Times the backing device was lost.",
    );
    family(
        "backing_reopened_total",
        "counter",
        "Times it was opened again.",
    );
    family(
        "stale_refused_total",
        "counter",
        "Commands refused BUSY, unrun, after a stall: LIO may have failed them back.",
    );
    family(
        "policy_refused_total",
        "counter",
        "Commands the command policy refused; none reached the backing device.",
    );
    family(
        "readonly_refused_total",
        "counter",
        "Commands read-only refused (DATA PROTECT); none reached the backing device.",
    );
    family(
        "cmd_time_out_seconds",
        "gauge",
        "LIO's cmd_time_out for the device (0: never).",
    );
    family("latency_seconds", "histogram", "Ring read to completion.");
    family(
        "path_retries_total",
        "counter",
        "A multipath map: SG_IOs sent again down another path after a path error.",
    );
    family(
        "path_failovers_total",
        "counter",
        "A multipath map: paths taken out of use after a path error.",
    );
    family(
        "path_up",
        "gauge",
        "A multipath map's path: 1 while commands may go down it.",
    );
    family(
        "path_commands_total",
        "counter",
        "A multipath map's path: SG_IOs sent down it.",
    );
    family(
        "path_errors_total",
        "counter",
        "A multipath map's path: path errors it gave.",
    );
    for d in &r.devices {
        let l = format!(
            "device=\"{}\",uio=\"{}\",backing=\"{}\"",
            label(&d.name),
            label(&d.uio),
            label(&d.backing)
        );
        let c = &d.counters;
        let mut m = |name: &str, extra: &str, v: u64| {
            let _ = writeln!(o, "tcmu_sg_{name}{{{l}{extra}}} {v}");
        };
        m("device_up", "", u64::from(d.state == "serving"));
        m("commands_total", "", c.done);
        m("in_flight", "", c.in_flight);
        m("bytes_total", ",direction=\"read\"", c.read_bytes);
        m("bytes_total", ",direction=\"write\"", c.written_bytes);
        m("status_total", ",status=\"good\"", c.good);
        m(
            "status_total",
            ",status=\"check_condition\"",
            c.check_by_key.iter().sum(),
        );
        m(
            "status_total",
            ",status=\"reservation_conflict\"",
            c.reservation_conflict,
        );
        m("status_total", ",status=\"busy\"", c.busy);
        m("status_total", ",status=\"task_set_full\"", c.task_set_full);
        m("status_total", ",status=\"other\"", c.other_status);
        for (k, n) in c.check_by_key.iter().enumerate() {
            if *n > 0 {
                m(
                    "check_condition_total",
                    &format!(",sense_key=\"{k:#x}\""),
                    *n,
                );
            }
        }
        m("split_commands_total", "", c.split);
        m("chunks_total", "", c.chunks);
        m("transport_errors_total", "", c.transport_errors);
        m("tmr_total", "", c.tmr);
        m("ring_resets_total", "", c.ring_resets);
        m("backing_lost_total", "", c.lost);
        m("backing_reopened_total", "", c.reopened);
        m("stale_refused_total", "", c.stale_refused);
        m("policy_refused_total", "", c.policy_refused);
        m("readonly_refused_total", "", c.readonly_refused);
        m("cmd_time_out_seconds", "", d.cmd_time_out_s);
        let mut cum = 0;
        for i in 0..LAT_BUCKETS.min(c.latency_us.len()) {
            cum += c.latency_us[i];
            let le = (1u64 << (i + 1)) as f64 / 1e6;
            m("latency_seconds_bucket", &format!(",le=\"{le}\""), cum);
        }
        m("latency_seconds_bucket", ",le=\"+Inf\"", cum);
        m("latency_seconds_count", "", cum);
        let _ = writeln!(
            o,
            "tcmu_sg_latency_seconds_sum{{{l}}} {}",
            c.latency_sum_us as f64 / 1e6
        );
        if let Some(mp) = &d.multipath {
            let mut m = |name: &str, extra: &str, v: u64| {
                let _ = writeln!(o, "tcmu_sg_{name}{{{l}{extra}}} {v}");
            };
            m("path_retries_total", "", mp.retries);
            m("path_failovers_total", "", mp.failovers);
            for p in &mp.paths {
                let pl = format!(",path=\"{}\"", label(&p.name));
                m("path_up", &pl, u64::from(p.state == "active"));
                m("path_commands_total", &pl, p.commands);
                m("path_errors_total", &pl, p.errors);
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut c = Counters {
            done: 1000,
            in_flight: 3,
            read_bytes: 4096 * 600,
            written_bytes: 4096 * 400,
            good: 998,
            check_by_key: vec![0; 16],
            reservation_conflict: 1,
            latency_us: vec![0; LAT_BUCKETS],
            latency_sum_us: 123_000,
            ..Counters::default()
        };
        c.check_by_key[3] = 1;
        c.stale_refused = 7;
        c.policy_refused = 3;
        c.readonly_refused = 2;
        c.latency_us[7] = 980;
        c.latency_us[12] = 20;
        let mut last = c.clone();
        last.done = 500;
        last.read_bytes = 2_000_000;
        Report {
            version: "0.1.0".into(),
            pid: 42,
            uptime_s: 10.0,
            threads: 5,
            max_threads: 1024,
            interval_s: 1.0,
            devices: vec![DeviceReport {
                uio: "uio0".into(),
                name: "user_1/d0".into(),
                config: "sg//dev/sdb".into(),
                backing: "/dev/sdb".into(),
                node: "/dev/sdb".into(),
                identity: "Linux scsi_debug".into(),
                state: "serving".into(),
                max_inflight: 192,
                threads: 4,
                counters: c,
                last,
                ..DeviceReport::default()
            }],
        }
    }

    #[test]
    fn the_table_shows_rates_latency_and_errors() {
        let t = table(&report());
        let row = t.lines().nth(2).unwrap();
        assert!(row.starts_with("uio0    user_1/d0"), "{row}");
        assert!(row.contains(" 500 ") && row.contains("2.0"), "{row}");
        // p50 in the [128, 256) us bucket, p99 in [4096, 8192).
        assert!(row.contains("256us") && row.contains("8192us"), "{row}");
        // Two errors, seven commands refused after a stall.
        assert!(row.trim_end().ends_with(" 2       7"), "{row}");
        // The backing path and its identity sit under their headers.
        let head = t.lines().nth(1).unwrap();
        let at = |h: &str| head.find(h).unwrap();
        assert!(row[at("BACKING")..].starts_with("/dev/sdb "), "{row}");
        assert!(
            row[at("IDENTITY")..].starts_with("Linux scsi_debug "),
            "{row}"
        );
    }

    #[test]
    fn prometheus_exposition_is_well_formed() {
        let r = report();
        let p = prometheus(&r);
        let l = "device=\"user_1/d0\",uio=\"uio0\",backing=\"/dev/sdb\"";
        assert!(p.contains(&format!("tcmu_sg_commands_total{{{l}}} 1000\n")));
        assert!(
            p.starts_with("# HELP tcmu_sg_up ") && p.contains("\ntcmu_sg_up 1\n"),
            "{p}"
        );
        assert!(p.contains(&format!(
            "tcmu_sg_build_info{{version=\"{}\"}} 1\n",
            r.version
        )));
        assert!(p.contains(&format!("tcmu_sg_device_up{{{l}}} ")));
        assert!(daemon_up(false).ends_with("\ntcmu_sg_up 0\n"));
        assert!(p.contains(&format!(
            "tcmu_sg_check_condition_total{{{l},sense_key=\"0x3\"}} 1\n"
        )));
        assert!(p.contains(&format!(
            "tcmu_sg_latency_seconds_bucket{{{l},le=\"+Inf\"}} 1000\n"
        )));
        assert!(p.contains(&format!("tcmu_sg_latency_seconds_sum{{{l}}} 0.123\n")));
        assert!(p.contains(&format!("tcmu_sg_stale_refused_total{{{l}}} 7\n")));
        assert!(p.contains(&format!("tcmu_sg_policy_refused_total{{{l}}} 3\n")));
        assert!(p.contains(&format!("tcmu_sg_readonly_refused_total{{{l}}} 2\n")));
        // Every sample line: name{labels} value, or name value.
        for line in p.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = match line.split_once('{') {
                Some((name, rest)) => (name, rest.rsplit_once("} ").unwrap().1),
                None => line.split_once(' ').unwrap(),
            };
            assert!(name.starts_with("tcmu_sg_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        // Buckets are cumulative.
        let b: Vec<u64> = p
            .lines()
            .filter(|l| l.starts_with("tcmu_sg_latency_seconds_bucket"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert!(label("a\"b\\c").contains("\\\"") && label("a\"b\\c").contains("\\\\"));
    }

    #[test]
    fn a_maps_paths_are_shown_under_its_device() {
        let mut r = report();
        r.devices[0].multipath = Some(MapReport {
            name: "mpatha".into(),
            dm_view: "read".into(),
            retries: 3,
            failovers: 1,
            reinstated: 1,
            reservation_key: Some("0x123abc".into()),
            paths: vec![
                PathReport {
                    name: "sdb".into(),
                    dev: "8:16".into(),
                    state: "active".into(),
                    dm: "active".into(),
                    commands: 500,
                    ..PathReport::default()
                },
                PathReport {
                    name: "sdc".into(),
                    dev: "8:32".into(),
                    state: "failed".into(),
                    dm: "failed".into(),
                    commands: 7,
                    errors: 2,
                    why: "host status DID_TRANSPORT_DISRUPTED (3 s ago)".into(),
                },
            ],
            ..MapReport::default()
        });
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[3].contains("map mpatha: 3 path retries, 1 failovers"),
            "{t}"
        );
        assert!(lines[3].contains("reservation key 0x123abc"), "{t}");
        assert!(
            lines[4].contains("path sdb") && lines[4].contains("active"),
            "{t}"
        );
        assert!(lines[5].contains("sdc") && lines[5].contains("DID_TRANSPORT_DISRUPTED"));
        let p = prometheus(&r);
        let l = "device=\"user_1/d0\",uio=\"uio0\",backing=\"/dev/sdb\"";
        assert!(
            p.contains(&format!("tcmu_sg_path_retries_total{{{l}}} 3\n")),
            "{p}"
        );
        assert!(p.contains(&format!("tcmu_sg_path_up{{{l},path=\"sdb\"}} 1\n")));
        assert!(p.contains(&format!("tcmu_sg_path_up{{{l},path=\"sdc\"}} 0\n")));
        assert!(p.contains(&format!(
            "tcmu_sg_path_errors_total{{{l},path=\"sdc\"}} 2\n"
        )));
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(
            back.devices[0].multipath.as_ref().unwrap().paths[1].errors,
            2
        );
    }

    #[test]
    fn json_round_trips() {
        let r = report();
        let s = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(back.devices[0].counters, r.devices[0].counters);
    }
}
