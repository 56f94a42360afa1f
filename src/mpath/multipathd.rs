//! multipathd's command socket, for the one thing tcmu-sg tells it: the
//! reservation key the initiator registered through a map, so that with
//! `reservation_key file` in multipath.conf multipathd registers it on a
//! path that comes back, as it does for keys `mpathpersist` registered.
//!
//! The protocol is libmpathcmd's: a stream socket at the abstract address
//! `@/org/kernel/linux/storage/multipathd`; each message is its length
//! (a native `size_t`) and the text with its NUL; the answer the same way.

use std::io::{self, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

const SOCKET: &[u8] = b"/org/kernel/linux/storage/multipathd";

/// Frames one command as libmpathcmd does.
pub fn frame(cmd: &str) -> Vec<u8> {
    let mut m = (cmd.len() + 1).to_ne_bytes().to_vec();
    m.extend_from_slice(cmd.as_bytes());
    m.push(0);
    m
}

/// Sends one command and returns multipathd's answer (`ok`, `fail`, or
/// what a `show` prints).
pub fn command(cmd: &str) -> io::Result<String> {
    let addr = SocketAddr::from_abstract_name(SOCKET)?;
    let mut s = UnixStream::connect_addr(&addr)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(&frame(cmd))?;
    let mut len = [0u8; std::mem::size_of::<usize>()];
    s.read_exact(&mut len)?;
    let len = usize::from_ne_bytes(len);
    if len > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "answer too long",
        ));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    Ok(String::from_utf8_lossy(&body[..end]).trim().to_string())
}

/// The commands that tell multipathd the key registered through `map`
/// (`None`: unregistered), as mpathpersist sends them.
pub fn key_commands(map: &str, key: Option<u64>, aptpl: bool) -> Vec<String> {
    match key {
        Some(k) => vec![
            format!(
                "setprkey map {map} key {k:#x}{}",
                if aptpl { ":aptpl" } else { "" }
            ),
            format!("setprstatus map {map}"),
        ],
        None => vec![
            format!("unsetprkey map {map}"),
            format!("unsetprstatus map {map}"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_as_libmpathcmd_frames_them() {
        let f = frame("show maps");
        assert_eq!(&f[..8], &10usize.to_ne_bytes());
        assert_eq!(&f[8..], b"show maps\0");
        assert_eq!(
            key_commands("mpatha", Some(0x123abc), false),
            ["setprkey map mpatha key 0x123abc", "setprstatus map mpatha"]
        );
        assert_eq!(
            key_commands("mpatha", Some(1), true)[0],
            "setprkey map mpatha key 0x1:aptpl"
        );
        assert_eq!(
            key_commands("mpatha", None, false),
            ["unsetprkey map mpatha", "unsetprstatus map mpatha"]
        );
    }
}
