//! Small wrappers over the syscalls the event loops use: poll, eventfd,
//! 4-byte reads and writes, and signal flags.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Reads exactly 4 bytes (uio event counters, eventfd values are 8).
pub fn read_u32(fd: RawFd) -> io::Result<Option<u32>> {
    let mut v = 0u32;
    // SAFETY: reads at most 4 bytes into a live u32.
    let n = unsafe { libc::read(fd, (&mut v as *mut u32).cast(), 4) };
    match n {
        4 => Ok(Some(v)),
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
        _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read")),
    }
}

/// Writes exactly 4 bytes (the uio doorbell).
pub fn write_u32(fd: RawFd, v: u32) -> io::Result<()> {
    loop {
        // SAFETY: writes 4 bytes from a live u32.
        let n = unsafe { libc::write(fd, (&v as *const u32).cast(), 4) };
        if n == 4 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if n < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(if n < 0 {
            e
        } else {
            io::Error::new(io::ErrorKind::WriteZero, "short write")
        });
    }
}

/// Takes ownership of the descriptor a creating syscall returned, or its
/// error when it returned -1.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative fd just returned by a creating syscall is a
    // fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads the 8-byte counter of an eventfd or timerfd; false if there was
/// none to read (EAGAIN) or the read failed.
fn read_counter(fd: &OwnedFd) -> bool {
    let mut v = 0u64;
    // SAFETY: reads at most 8 bytes into a live u64.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    n == 8
}

/// Adds 1 to an eventfd's counter. A failure (the counter full) still
/// leaves the fd readable, which is all its readers need.
fn add_one(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// An eventfd used to wake an event loop from other threads.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no memory arguments.
        owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }).map(EventFd)
    }

    pub fn wake(&self) {
        add_one(&self.0);
    }

    pub fn drain(&self) {
        read_counter(&self.0);
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An eventfd in semaphore mode: each [`Semaphore::post`] lets one
/// [`Semaphore::take`] succeed, and wakes one exclusive waiter.
#[derive(Debug)]
pub struct Semaphore(OwnedFd);

impl Semaphore {
    pub fn new() -> io::Result<Self> {
        let flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE;
        // SAFETY: eventfd has no memory arguments.
        owned(unsafe { libc::eventfd(0, flags) }).map(Semaphore)
    }

    /// Adds one. One write per post: a write wakes one exclusive waiter
    /// whatever the value written.
    pub fn post(&self) {
        add_one(&self.0);
    }

    /// Takes one if there is one (never blocks).
    pub fn take(&self) -> bool {
        read_counter(&self.0)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A periodic CLOCK_MONOTONIC timerfd (non-blocking).
#[derive(Debug)]
pub struct TimerFd(OwnedFd);

impl TimerFd {
    pub fn new() -> io::Result<Self> {
        let flags = libc::TFD_CLOEXEC | libc::TFD_NONBLOCK;
        // SAFETY: timerfd_create has no memory arguments.
        owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) }).map(TimerFd)
    }

    /// Fires first after `first`, then every `period`.
    pub fn set(&self, first: Duration, period: Duration) -> io::Result<()> {
        let ts = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // A zero first expiry would disarm the timer.
        let first = first.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: ts(period),
            it_value: ts(first),
        };
        // SAFETY: passes one live itimerspec; the old value is not asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.0.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes the expiries so far (the fd is readable until then).
    pub fn drain(&self) {
        read_counter(&self.0);
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll set that several threads wait on at once. A thread sleeping
/// in [`Epoll::wait`] waits exclusively: an event wakes one of them, the
/// one that has waited longest.
#[derive(Debug)]
pub struct Epoll(OwnedFd);

/// What [`Epoll::wait`] found: bit `token` set for each fd ready, and in
/// `errors` for each fd reporting an error or hang-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    pub bits: u64,
    pub errors: u64,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments.
        owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map(Epoll)
    }

    /// Adds `fd` for input, reported as `token` (0..64). `edge`: each
    /// wake-up of the fd is reported once, to one waiting thread, whether
    /// or not the fd is read (`EPOLLET`); otherwise the fd is reported as
    /// long as it is readable.
    pub fn add(&self, fd: RawFd, token: u32, edge: bool) -> io::Result<()> {
        assert!(token < 64);
        let mut events = libc::EPOLLIN as u32;
        if edge {
            events |= libc::EPOLLET as u32;
        }
        let mut ev = libc::epoll_event {
            events,
            u64: u64::from(token),
        };
        // SAFETY: passes one live epoll_event; both fds are open.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sleeps until an fd is ready or `timeout` passes (None: no bound).
    /// Nothing ready after a timeout or a signal.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Ready> {
        // Rounded up: a wait cut to 0 ms would spin.
        let ms = timeout.map_or(-1, |t| {
            t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
        // SAFETY: evs has room for the 8 events we say it has.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), evs.as_mut_ptr(), 8, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(Ready::default())
            } else {
                Err(e)
            };
        }
        let mut r = Ready::default();
        for e in &evs[..n as usize] {
            let bit = 1u64 << (e.u64 & 63);
            r.bits |= bit;
            if e.events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                r.errors |= bit;
            }
        }
        Ok(r)
    }
}

/// Waits until one of `fds` is readable (or has an error) or `timeout_ms`
/// passes. Returns the revents of each fd.
pub fn poll_in(fds: &[RawFd], timeout_ms: i32, revents: &mut [i16]) -> io::Result<()> {
    let mut p: [libc::pollfd; 4] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    assert!(fds.len() <= p.len() && revents.len() >= fds.len());
    for (i, fd) in fds.iter().enumerate() {
        p[i].fd = *fd;
        p[i].events = libc::POLLIN;
    }
    // SAFETY: p holds fds.len() initialised pollfd entries.
    let n = unsafe { libc::poll(p.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    for i in 0..fds.len() {
        revents[i] = if n > 0 { p[i].revents } else { 0 };
    }
    Ok(())
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the kernel's last tick, read
/// from the vDSO without touching the clock hardware (an HPET read under a
/// TCG guest is a trap); it lags the precise clock by up to one tick.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the live value we
    // pass; CLOCK_MONOTONIC_COARSE exists on every kernel we run on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// [`monotonic_coarse_ns`] as a Duration (since an arbitrary start).
pub fn coarse_now() -> Duration {
    Duration::from_nanos(monotonic_coarse_ns())
}

/// Bounds glibc's malloc arenas at `n`. Each thread that allocates gets
/// an arena of its own otherwise, up to eight per CPU, and a daemon whose
/// crews start and retire threads as the load comes and goes spreads its
/// few allocations over ever more of them: the resident size creeps. The
/// command path does not allocate (`tests/alloc_steady.rs`), so two arenas
/// cost no contention. Returns whether glibc took it.
pub fn limit_malloc_arenas(n: i32) -> bool {
    // SAFETY: mallopt only changes allocator parameters; called at start,
    // before any thread of ours exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
}

/// Raises the soft limit on open files to the hard one: each device holds
/// six (uio, backing device, wake-up, timer, call, epoll set), so the
/// usual soft limit of 1024 would stop a daemon at about 160 devices.
/// Returns the limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live value we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: setrlimit reads one live rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(rl.rlim_cur)
}

/// Voluntary context switches of the calling thread so far (it slept that
/// many times).
pub fn voluntary_switches() -> u64 {
    // SAFETY: rusage is plain data; an all-zero value is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the live value we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return 0;
    }
    ru.ru_nvcsw as u64
}

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

/// Installs SIGTERM/SIGINT handlers that set a flag (`stop_requested`), a
/// SIGHUP handler (`reload_requested`), and ignores SIGPIPE.
pub fn install_stop_handlers() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an
        // atomic is async-signal-safe; sa_mask is emptied before use.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: ignoring SIGPIPE has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// True once after each SIGHUP.
pub fn reload_requested() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

/// The capabilities `run` needs that this process lacks in its effective
/// set, by name: CAP_SYS_RAWIO (SG_IO with every CDB) and CAP_NET_ADMIN
/// (the TCM-USER netlink group). Read from `CapEff` in a status file
/// (`/proc/self/status`); unknown when it cannot be read (empty).
pub fn missing_capabilities(status: &str) -> Vec<&'static str> {
    const NEEDED: [(u32, &str); 2] = [(17, "CAP_SYS_RAWIO"), (12, "CAP_NET_ADMIN")];
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Vec::new();
    };
    NEEDED
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect()
}

/// Sends `msg` to systemd's notification socket (`$NOTIFY_SOCKET`, a path
/// or an abstract name starting with '@'); false when there is none or
/// the send failed. No libsystemd: the protocol is one datagram.
pub fn notify(msg: &str) -> bool {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
        }
        None => sock.send_to(msg.as_bytes(), &path),
    };
    sent.is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn capabilities_missing_from_the_effective_set() {
        use super::missing_capabilities as m;
        assert!(m("Name:\tx\nCapEff:\t000001ffffffffff\n").is_empty());
        assert_eq!(
            m("CapEff:\t0000000000000000\n"),
            ["CAP_SYS_RAWIO", "CAP_NET_ADMIN"]
        );
        assert_eq!(m("CapEff:\t0000000000001000\n"), ["CAP_SYS_RAWIO"]);
        assert!(m("no such line").is_empty());
    }

    use super::*;

    #[test]
    fn notify_sends_one_datagram_to_the_socket_systemd_names() {
        let dir = std::env::temp_dir().join(format!("tcmu-sg-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1\nSTATUS=serving 3 devices"));
        let mut buf = [0u8; 128];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving 3 devices");
        std::env::remove_var("NOTIFY_SOCKET");
        assert!(!notify("READY=1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
