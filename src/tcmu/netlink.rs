//! Events of the TCM-USER generic netlink family (multicast group
//! `config`): devices added, removed and reconfigured.
//!
//! tcmu-sg only listens. It never sends SET_FEATURES, so the kernel never
//! waits for a reply from it, and it never replies to an event: a device
//! add or remove cannot block on tcmu-sg, and tcmu-sg cannot answer for
//! another daemon's device.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::abi::*;

const NETLINK_GENERIC: libc::c_int = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;

/// A device event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub cmd: u8,
    /// The uio name (`tcm-user/...`), when present.
    pub device: Option<String>,
    pub minor: Option<u32>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates the netlink attributes in `buf`, bounds-checked.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            return None;
        }
        let payload = &buf[off + 4..off + len];
        off += align4(len);
        Some((ty, payload))
    })
}

/// Messages in one datagram: (type, payload after the netlink header).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + NLMSG_HDRLEN > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return None;
        }
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        off += align4(len);
        Some((ty, payload))
    })
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses a TCM-USER event datagram.
pub fn parse_events(buf: &[u8], family: u16) -> Vec<Event> {
    let mut out = Vec::new();
    for (ty, payload) in messages(buf) {
        if ty != family || payload.len() < GENL_HDRLEN {
            continue;
        }
        let mut ev = Event {
            cmd: payload[0],
            device: None,
            minor: None,
        };
        for (aty, v) in attrs(&payload[GENL_HDRLEN..]) {
            match aty {
                NL_ATTR_DEVICE => ev.device = Some(cstr(v)),
                NL_ATTR_MINOR if v.len() >= 4 => {
                    ev.minor = Some(u32::from_ne_bytes(v[..4].try_into().unwrap()))
                }
                _ => {}
            }
        }
        out.push(ev);
    }
    out
}

/// A socket subscribed to the `config` group.
pub struct Listener {
    fd: OwnedFd,
    family: u16,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// What to do about an error of [`Listener::open`].
pub fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) => {
            "the kernel has no TCM-USER family: load target_core_user \
             (modprobe target_core_user; the package loads it at boot through \
             /usr/lib/modules-load.d/tcmu-sg.conf)"
        }
        Some(libc::EPERM | libc::EACCES) => {
            "joining the TCM-USER group needs CAP_NET_ADMIN: run tcmu-sg as root"
        }
        _ => "",
    }
}

impl Listener {
    /// Resolves the family and joins its `config` group. Fails when
    /// target_core_user is not loaded (no family) or without CAP_NET_ADMIN.
    pub fn open() -> io::Result<Listener> {
        // SAFETY: socket() has no memory arguments; the result is checked
        // and owned immediately.
        let fd = unsafe {
            OwnedFd::from_raw_fd(check(libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_GENERIC,
            ))?)
        };
        // SAFETY: a zeroed sockaddr_nl with the family set is a valid
        // address; its size is passed.
        unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            check(libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ))?;
        }
        // GETFAMILY request.
        let name = NL_FAMILY_NAME.as_bytes();
        let attr_len = 4 + name.len() + 1;
        let total = NLMSG_HDRLEN + GENL_HDRLEN + align4(attr_len);
        let mut req = vec![0u8; total];
        req[0..4].copy_from_slice(&(total as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&GENL_ID_CTRL.to_ne_bytes());
        req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[16] = CTRL_CMD_GETFAMILY;
        req[17] = 1;
        let a = NLMSG_HDRLEN + GENL_HDRLEN;
        req[a..a + 2].copy_from_slice(&(attr_len as u16).to_ne_bytes());
        req[a + 2..a + 4].copy_from_slice(&CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
        req[a + 4..a + 4 + name.len()].copy_from_slice(name);
        // SAFETY: sends `req.len()` bytes from a live buffer.
        check(unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } as i32)?;
        let mut buf = vec![0u8; 8192];
        // SAFETY: receives at most buf.len() bytes into a live buffer.
        let n = check(
            unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as i32,
        )? as usize;
        let (family, group) = parse_family(&buf[..n])?;
        // SAFETY: passes a pointer to a live u32 and its size.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                4,
            )
        })?;
        Ok(Listener { fd, family })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives one datagram (blocking) and returns its events.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Vec<Event>> {
        // SAFETY: receives at most buf.len() bytes into a live buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(parse_events(&buf[..n as usize], self.family))
    }
}

fn parse_family(buf: &[u8]) -> io::Result<(u16, u32)> {
    let mut family = None;
    let mut group = None;
    for (ty, payload) in messages(buf) {
        if ty == NLMSG_ERROR {
            let code = payload
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                .unwrap_or(-libc::EIO);
            return Err(io::Error::from_raw_os_error(-code));
        }
        if payload.len() < GENL_HDRLEN {
            continue;
        }
        for (aty, v) in attrs(&payload[GENL_HDRLEN..]) {
            match aty {
                CTRL_ATTR_FAMILY_ID if v.len() >= 2 => {
                    family = Some(u16::from_ne_bytes([v[0], v[1]]))
                }
                CTRL_ATTR_MCAST_GROUPS => {
                    for (_, grp) in attrs(v) {
                        let mut name = None;
                        let mut id = None;
                        for (gty, gv) in attrs(grp) {
                            match gty {
                                CTRL_ATTR_MCAST_GRP_NAME => name = Some(cstr(gv)),
                                CTRL_ATTR_MCAST_GRP_ID if gv.len() >= 4 => {
                                    id = Some(u32::from_ne_bytes(gv[..4].try_into().unwrap()))
                                }
                                _ => {}
                            }
                        }
                        if name.as_deref() == Some(NL_MCGRP_CONFIG) {
                            group = id;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    match (family, group) {
        (Some(f), Some(g)) => Ok((f, g)),
        _ => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "TCM-USER netlink family or its config group not found",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(ty: u16, cmd: u8, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + GENL_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[cmd, 2, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn events_parse_and_truncation_is_safe() {
        let mut body = attr(NL_ATTR_DEVICE, b"tcm-user/1/d0/sg//dev/sdb\0");
        body.extend(attr(NL_ATTR_MINOR, &3u32.to_ne_bytes()));
        let m = msg(0x20, NL_CMD_ADDED_DEVICE, &body);
        let ev = parse_events(&m, 0x20);
        assert_eq!(
            ev,
            vec![Event {
                cmd: NL_CMD_ADDED_DEVICE,
                device: Some("tcm-user/1/d0/sg//dev/sdb".into()),
                minor: Some(3)
            }]
        );
        assert!(parse_events(&m, 0x21).is_empty(), "other families ignored");
        for cut in 0..m.len() {
            let _ = parse_events(&m[..cut], 0x20);
        }
        // A lying attribute length does not read past the buffer.
        let mut bad = m.clone();
        bad[NLMSG_HDRLEN + GENL_HDRLEN] = 0xff;
        let ev = parse_events(&bad, 0x20);
        assert_eq!(ev[0].device, None);
    }

    #[test]
    fn family_reply_parses() {
        let grp = {
            let mut g = attr(CTRL_ATTR_MCAST_GRP_NAME, b"config\0");
            g.extend(attr(CTRL_ATTR_MCAST_GRP_ID, &7u32.to_ne_bytes()));
            attr(1, &g)
        };
        let mut body = attr(CTRL_ATTR_FAMILY_ID, &0x1cu16.to_ne_bytes());
        body.extend(attr(CTRL_ATTR_MCAST_GROUPS, &grp));
        assert_eq!(
            parse_family(&msg(GENL_ID_CTRL, 1, &body)).unwrap(),
            (0x1c, 7)
        );
    }
}
