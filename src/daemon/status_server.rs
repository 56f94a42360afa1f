//! Serves `tcmu-sg status`: a thread listening on a root-only Unix socket
//! (the directory 0700, the socket 0600) that answers each connection with
//! a JSON report of every device. Once a second it samples every device's
//! counters, so a report carries the last interval's figures (IOPS, MB/s,
//! latency percentiles) beside the totals.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::Device;
use super::dispatch::{Budget, Crew};
use crate::stats::Counters;
use crate::status::Report;

/// How often the counters are sampled.
const SAMPLE: Duration = Duration::from_secs(1);

pub struct StatusServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl StatusServer {
    /// Binds `path` and starts serving. A live daemon already answering
    /// there is not displaced.
    pub fn start(
        path: &Path,
        view: Arc<Mutex<Vec<Arc<Crew<Device>>>>>,
        budget: Arc<Budget>,
    ) -> Result<StatusServer, String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(err)?;
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(format!("{}: another daemon answers there", path.display()));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("status".into())
            .spawn(move || serve(listener, view, budget, s2))
            .map_err(|e| e.to_string())?;
        Ok(StatusServer {
            stop,
            handle: Some(handle),
            path: path.to_path_buf(),
        })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Two samples per device: the report covers `older` to now, at least one
/// sampling period.
#[derive(Default)]
struct Samples {
    older: Option<(Instant, Counters)>,
    newer: Option<(Instant, Counters)>,
}

fn serve(
    listener: UnixListener,
    view: Arc<Mutex<Vec<Arc<Crew<Device>>>>>,
    budget: Arc<Budget>,
    stop: Arc<AtomicBool>,
) {
    let started = Instant::now();
    let mut samples: HashMap<String, Samples> = HashMap::new();
    let mut last_sample = Instant::now() - SAMPLE;
    let mut revents = [0i16; 1];
    while !stop.load(Ordering::SeqCst) {
        if last_sample.elapsed() >= SAMPLE {
            last_sample = Instant::now();
            let crews = view.lock().unwrap().clone();
            samples.retain(|uio, _| crews.iter().any(|c| &c.work().report_uio() == uio));
            for c in &crews {
                let s = samples.entry(c.work().report_uio()).or_default();
                s.older = s.newer.take().or(s.older.take());
                s.newer = Some((Instant::now(), c.work().stats.snapshot()));
                if s.older.is_none() {
                    s.older = s.newer.clone();
                }
            }
        }
        if crate::sys::poll_in(&[listener.as_raw_fd()], 250, &mut revents).is_err()
            || revents[0] == 0
        {
            continue;
        }
        let Ok((conn, _)) = listener.accept() else {
            continue;
        };
        let report = build(&view, &budget, &samples, started);
        if let Err(e) = answer(conn, &report) {
            log::debug!("status: {e}");
        }
    }
}

fn build(
    view: &Mutex<Vec<Arc<Crew<Device>>>>,
    budget: &Budget,
    samples: &HashMap<String, Samples>,
    started: Instant,
) -> Report {
    let crews = view.lock().unwrap().clone();
    let now = Instant::now();
    let mut interval = 0.0f64;
    let devices = crews
        .iter()
        .map(|c| {
            let mut d = c.work().report(c);
            if let Some((t, old)) = samples.get(&d.uio).and_then(|s| s.older.as_ref()) {
                d.last = d.counters.since(old);
                interval = interval.max(now.duration_since(*t).as_secs_f64());
            }
            d
        })
        .collect();
    Report {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_s: started.elapsed().as_secs_f64(),
        threads: budget.used(),
        max_threads: budget.limit(),
        interval_s: interval,
        devices,
    }
}

fn answer(conn: UnixStream, report: &Report) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let mut w = &conn;
    if line.trim() != "status" {
        return w.write_all(b"{\"error\": \"unknown request\"}\n");
    }
    serde_json::to_writer(&mut w, report)?;
    w.write_all(b"\n")
}
