//! The device-mapper ioctls tcmu-sg uses on a multipath map, and the
//! parsing of what they return. The only unsafe code of `mpath`.
//!
//! - `DM_TABLE_STATUS` and `DM_TARGET_MSG` go to `/dev/mapper/control`,
//!   which the kernel opens to CAP_SYS_ADMIN only: the map's target type,
//!   its features (`queue_if_no_path`), the state dm gives each path
//!   (active or failed) and each priority group, and `fail_path`.
//! - `DM_MPATH_PROBE_PATHS` goes to the map's own node (Linux 6.16 and
//!   later; `ENOTTY` before): dm reads a block through each active path of
//!   the current group and fails those that error.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `struct dm_ioctl` from `<linux/dm-ioctl.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);

/// `struct dm_target_spec`: what precedes each target's status string.
const TARGET_SPEC_LEN: usize = 40;

const DM_IOCTL: u32 = 0xfd;
/// `_IOWR(DM_IOCTL, nr, struct dm_ioctl)`.
const fn iowr(nr: u32) -> libc::c_ulong {
    ((3u32 << 30) | ((std::mem::size_of::<DmIoctl>() as u32) << 16) | (DM_IOCTL << 8) | nr)
        as libc::c_ulong
}
const DM_TABLE_STATUS: libc::c_ulong = iowr(12);
const DM_TARGET_MSG: libc::c_ulong = iowr(14);
/// `_IO(DM_IOCTL, 18)`.
const DM_MPATH_PROBE_PATHS: libc::c_ulong = ((DM_IOCTL << 8) | 18) as libc::c_ulong;

const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

/// The ioctl buffer: the header, then room for what the kernel returns.
/// Kept in u64s for the 8-byte alignment the kernel's structures want.
const BUF_WORDS: usize = 2048;

fn control() -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/mapper/control")
}

/// Issues one control ioctl on the map named `name`, with `payload` after
/// the header; returns the header and the buffer.
fn ctl(
    cmd: libc::c_ulong,
    name: &str,
    flags: u32,
    payload: &[u8],
) -> io::Result<(DmIoctl, Vec<u64>)> {
    let hdr = std::mem::size_of::<DmIoctl>();
    if name.len() >= 128 || hdr + payload.len() > BUF_WORDS * 8 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buf = vec![0u64; BUF_WORDS];
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: (BUF_WORDS * 8) as u32,
        data_start: hdr as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: buf holds BUF_WORDS * 8 bytes, 8-byte aligned; the header
    // (312 bytes, a plain C struct) and the payload fit (checked above).
    unsafe {
        let p = buf.as_mut_ptr().cast::<u8>();
        std::ptr::write_unaligned(p.cast::<DmIoctl>(), h);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(hdr), payload.len());
    }
    let f = control()?;
    // SAFETY: the kernel reads and writes at most `data_size` bytes of buf
    // (it copies the header first and checks data_size against it).
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), cmd as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: buf starts with the header the kernel wrote back.
    let out = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<DmIoctl>()) };
    Ok((out, buf))
}

/// The map's single target: its type and its status (or, with `table`,
/// its table line).
pub fn target_status(name: &str, table: bool) -> io::Result<(String, String)> {
    let flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
    let (h, buf) = ctl(DM_TABLE_STATUS, name, flags, &[])?;
    if h.flags & DM_BUFFER_FULL_FLAG != 0 {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            "dm status larger than the buffer",
        ));
    }
    if h.target_count != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} targets, not one", h.target_count),
        ));
    }
    // SAFETY: the buffer is BUF_WORDS * 8 initialised bytes.
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), BUF_WORDS * 8) };
    let end = (h.data_size as usize).min(bytes.len());
    let spec = bytes
        .get(h.data_start as usize..end)
        .filter(|s| s.len() >= TARGET_SPEC_LEN)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short dm status"))?;
    let cstr = |b: &[u8]| {
        let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    Ok((cstr(&spec[24..40]), cstr(&spec[TARGET_SPEC_LEN..])))
}

/// Sends `message` (e.g. `fail_path 8:16`) to the map's target.
pub fn message(name: &str, message: &str) -> io::Result<()> {
    // struct dm_target_msg: the sector (0), then the NUL-terminated text.
    let mut payload = vec![0u8; 8];
    payload.extend_from_slice(message.as_bytes());
    payload.push(0);
    ctl(DM_TARGET_MSG, name, 0, &payload).map(|_| ())
}

/// What `DM_MPATH_PROBE_PATHS` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Usable paths remain (dm failed those that erred).
    Usable,
    /// No usable path.
    NoPath,
    /// The map is suspended (a table reload; libmpathpersist suspends it
    /// while it moves a reservation): try again shortly.
    Suspended,
    /// The kernel has no such ioctl (before 6.16).
    Unsupported,
}

/// Asks dm to probe the active paths of the map open as `map`.
pub fn probe_paths(map: &File) -> io::Result<Probe> {
    // SAFETY: an ioctl without argument on an open block device.
    let rc = unsafe { libc::ioctl(map.as_raw_fd(), DM_MPATH_PROBE_PATHS as _) };
    if rc == 0 {
        return Ok(Probe::Usable);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOTCONN) => Ok(Probe::NoPath),
        Some(libc::EAGAIN) => Ok(Probe::Suspended),
        Some(libc::ENOTTY) | Some(libc::EINVAL) => Ok(Probe::Unsupported),
        _ => Err(e),
    }
}

/// dm's view of one path of a multipath map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmPath {
    /// `major:minor`.
    pub dev: String,
    pub active: bool,
    pub fail_count: u32,
    /// Its priority group's state: `A` (the one in use), `E` (enabled),
    /// `D` (disabled, bypassed).
    pub group: char,
    /// Its priority group's number, from 1.
    pub group_no: u32,
}

/// A multipath target's status line ("info" output of `multipath_status`
/// in drivers/md/dm-mpath.c):
///
/// ```text
/// #features [features]* #handler_args [args]* #groups next_group
///   [A|D|E #ps_status_args [args]* #paths #selector_args
///     [dev A|F fail_count [selector_args]*]+ ]+
/// ```
pub fn parse_status(s: &str) -> Option<Vec<DmPath>> {
    let mut w = s.split_ascii_whitespace();
    let num =
        |w: &mut std::str::SplitAsciiWhitespace<'_>| -> Option<usize> { w.next()?.parse().ok() };
    let skip = |w: &mut std::str::SplitAsciiWhitespace<'_>, n: usize| -> Option<()> {
        for _ in 0..n {
            w.next()?;
        }
        Some(())
    };
    let features = num(&mut w)?;
    skip(&mut w, features)?;
    let handler = num(&mut w)?;
    skip(&mut w, handler)?;
    let groups = num(&mut w)?;
    let _next = num(&mut w)?;
    let mut out = Vec::new();
    for g in 0..groups {
        let state = w.next()?.chars().next()?;
        if !matches!(state, 'A' | 'E' | 'D') {
            return None;
        }
        let ps_args = num(&mut w)?;
        skip(&mut w, ps_args)?;
        let paths = num(&mut w)?;
        let sel_args = num(&mut w)?;
        for _ in 0..paths {
            let dev = w.next()?.to_string();
            let active = match w.next()? {
                "A" => true,
                "F" => false,
                _ => return None,
            };
            let fail_count = w.next()?.parse().ok()?;
            skip(&mut w, sel_args)?;
            out.push(DmPath {
                dev,
                active,
                fail_count,
                group: state,
                group_no: g as u32 + 1,
            });
        }
    }
    Some(out)
}

/// Whether a multipath table line asks dm to queue I/O when no path is
/// left (`queue_if_no_path` among its features).
pub fn table_queues(table: &str) -> bool {
    let mut w = table.split_ascii_whitespace();
    let n: usize = w.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    w.take(n).any(|f| f == "queue_if_no_path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_are_the_kernels() {
        // From <linux/dm-ioctl.h> on x86_64.
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
        assert_eq!(DM_TARGET_MSG, 0xc138_fd0e);
        assert_eq!(DM_MPATH_PROBE_PATHS, 0xfd12);
    }

    #[test]
    fn a_status_line_gives_each_paths_state_and_group() {
        // Two groups (failover), round-robin (1 selector arg per path: the
        // repeat count), the second group's path failed once.
        let s = "2 0 0 0 2 1 A 0 1 1 8:16 A 0 0 E 0 1 1 8:32 F 1 0 ";
        let p = parse_status(s).unwrap();
        assert_eq!(
            p,
            vec![
                DmPath {
                    dev: "8:16".into(),
                    active: true,
                    fail_count: 0,
                    group: 'A',
                    group_no: 1
                },
                DmPath {
                    dev: "8:32".into(),
                    active: false,
                    fail_count: 1,
                    group: 'E',
                    group_no: 2
                },
            ]
        );
        // One group (multibus), a hardware handler with status args,
        // service-time selector (2 args a path).
        let s = "2 0 0 1 alua 1 1 A 0 2 2 8:16 A 0 0 1 8:32 A 0 0 1";
        let p = parse_status(s).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.active && p.group == 'A'));
        assert_eq!(p[1].dev, "8:32");
        // Cut short, or a state that is not one: refused, not guessed.
        assert_eq!(parse_status("2 0 0 0 1 1 A 0 2 1 8:16 A 0 0"), None);
        assert_eq!(parse_status("2 0 0 0 1 1 X 0 1 1 8:16 A 0 0"), None);
        assert_eq!(parse_status("2 0 0 0 1 1 A 0 1 1 8:16 Q 0 0"), None);
        assert_eq!(parse_status(""), None);
        // A map without paths.
        assert_eq!(parse_status("2 0 0 0 0 0"), Some(vec![]));
    }

    #[test]
    fn queue_if_no_path_is_read_from_the_features() {
        assert!(table_queues(
            "1 queue_if_no_path 1 alua 1 1 service-time 0 2 2 8:16 1 1 8:32 1 1"
        ));
        assert!(table_queues(
            "3 queue_if_no_path pg_init_retries 50 0 1 1 round-robin 0 1 1 8:16 1"
        ));
        assert!(!table_queues(
            "2 pg_init_retries 50 0 1 1 round-robin 0 1 1 8:16 1"
        ));
        // A path named like the feature is not a feature.
        assert!(!table_queues("0 0 1 1 queue_if_no_path 0 1 1 8:16 1"));
    }
}
