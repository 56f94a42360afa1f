//! Persistent reservations through a map (`pgr_support=0`: the
//! initiator's PERSISTENT RESERVE commands reach tcmu-sg). At the unit,
//! each path is an I_T nexus of its own, so a key registered down one path
//! would not let the initiator write down another under a reservation
//! that admits registrants only. So, as libmpathpersist does:
//!
//! - REGISTER and REGISTER AND IGNORE EXISTING KEY go down one path as the
//!   initiator sent them; its answer is the initiator's. If it is GOOD,
//!   every other usable path is brought in step with REGISTER AND IGNORE
//!   EXISTING KEY and the new key (which cannot conflict);
//! - RELEASE goes down every usable path (the holder is whichever path
//!   the reservation was made on); the first path's answer is returned;
//! - RESERVE, PREEMPT, CLEAR and the rest go down one path, and again
//!   down another after a path error; PERSISTENT RESERVE IN likewise;
//! - a path that missed a change (down at the time, added to the map
//!   later) is taken out of use until the checker has brought it in step:
//!   if the key is still registered at the unit (READ KEYS), it registers
//!   it down that path with REGISTER AND IGNORE EXISTING KEY; if another
//!   host preempted it meanwhile, it does not (the initiator stays
//!   fenced), as multipathd does for `reservation_key file`;
//! - multipathd is told the key (`setprkey`), so that with
//!   `reservation_key file` it registers returning paths too.
//!
//! Every SG_IO for the initiator's command is admitted by the stall rule
//! first. The state below is held under one lock while a change is made,
//! so a checker's catch-up never overtakes a newer change.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::map::Multipath;
use super::path::Path;
use super::verdict::path_error;
use crate::dma::ChunkIo;
use crate::error::CmdError;
use crate::scsi::sense::{status, SgResult};
use crate::sg::engine::{Call, Sent};
use crate::sg::io::{sg_io, sg_io_in, sg_io_out};

const PR_OUT: u8 = 0x5f;
const PR_IN: u8 = 0x5e;
pub const REGISTER: u8 = 0x00;
pub const RELEASE: u8 = 0x02;
pub const CLEAR: u8 = 0x03;
pub const PREEMPT: u8 = 0x04;
pub const PREEMPT_AND_ABORT: u8 = 0x05;
pub const REGISTER_AND_IGNORE: u8 = 0x06;

/// The parameter list's flags byte (20): SPEC_I_PT, ALL_TG_PT, APTPL.
const SPEC_I_PT: u8 = 0x08;
const ALL_TG_PT: u8 = 0x04;
const APTPL: u8 = 0x01;

/// The handler's own PR commands' SG_IO timeout.
const OWN_TIMEOUT_MS: u32 = 10_000;

/// What the initiator registered through the map.
#[derive(Debug, Default)]
pub struct PrState {
    /// The key registered (None: none, or unregistered).
    pub key: Option<u64>,
    /// Registered with ALL_TG_PT and APTPL (carried to other paths).
    pub flags: u8,
    /// A change was ever made (paths added later must be checked).
    pub touched: bool,
}

pub fn is_pr_out(cdb: &[u8]) -> bool {
    cdb.first() == Some(&PR_OUT)
}

/// The first 24 bytes of a PR OUT parameter list, from the ring.
fn params(io: &ChunkIo<'_>, call: &Call<'_>) -> Option<[u8; 24]> {
    let mut p = [0u8; 24];
    let mut done = 0;
    for v in io.iovs {
        let n = (p.len() - done).min(v.len as usize);
        call.map.read_bytes(v.off, &mut p[done..done + n]).ok()?;
        done += n;
        if done == p.len() {
            return Some(p);
        }
    }
    None
}

/// A REGISTER AND IGNORE EXISTING KEY of `key` (0: unregister): its CDB
/// and parameter list.
pub fn register_ignore(key: Option<u64>, flags: u8) -> ([u8; 10], [u8; 24]) {
    let cdb = [PR_OUT, REGISTER_AND_IGNORE, 0, 0, 0, 0, 0, 0, 24, 0];
    let mut p = [0u8; 24];
    p[8..16].copy_from_slice(&key.unwrap_or(0).to_be_bytes());
    p[20] = flags & (ALL_TG_PT | APTPL);
    (cdb, p)
}

/// The keys READ KEYS returned (its parameter data).
pub fn parse_keys(d: &[u8]) -> Option<Vec<u64>> {
    let len = u32::from_be_bytes(d.get(4..8)?.try_into().ok()?) as usize;
    let keys = d.get(8..8 + len.min(d.len().saturating_sub(8)))?;
    Some(
        keys.chunks_exact(8)
            .map(|k| u64::from_be_bytes(k.try_into().unwrap()))
            .collect(),
    )
}

fn good(r: &SgResult) -> bool {
    r.errno == 0 && r.host_status == 0 && r.status == status::GOOD && r.driver_status & 0x0f == 0
}

impl Multipath {
    /// A PERSISTENT RESERVE OUT from the initiator (see the module).
    pub fn pr_out(&self, io: &ChunkIo<'_>, call: &mut Call<'_>) -> Result<Sent, CmdError> {
        let sa = io.cdb.get(1).map_or(0, |b| b & 0x1f);
        let send = |p: &Path, c: &mut Call<'_>| sg_io(p.fd(), c.map, io, c.timeout_ms, c.scratch);
        let mut st = self.pr.lock().unwrap();
        match sa {
            REGISTER | REGISTER_AND_IGNORE => {
                let Some(prm) = params(io, call) else {
                    // Not a parameter list the unit accepts: its answer.
                    return self.send_with(call, send);
                };
                let (sent, first) = self.send_on(call, send)?;
                let Some(first) = first.filter(|_| good(&sent.result)) else {
                    return Ok(sent);
                };
                let key = u64::from_be_bytes(prm[8..16].try_into().unwrap());
                st.key = (key != 0).then_some(key);
                st.flags = prm[20] & (ALL_TG_PT | APTPL);
                st.touched = true;
                if prm[20] & SPEC_I_PT != 0 {
                    log::info!(
                        "{}: REGISTER with SPEC_I_PT: the other initiators it named \
                         were registered down path {} only",
                        self.label(),
                        first.name
                    );
                }
                self.in_step_with(&st, &first, call);
                self.tell_multipathd(&st);
                Ok(sent)
            }
            RELEASE => {
                let (sent, first) = self.send_on(call, send)?;
                if let Some(first) = first.filter(|_| good(&sent.result)) {
                    for p in self.others(&first) {
                        if (call.admit)().is_err() {
                            break;
                        }
                        let r = send(&p, call);
                        match path_error(&r) {
                            Some(e) => self.path_failed(&p, e),
                            None if !good(&r) => log::info!(
                                "{}: RELEASE down path {}: status {:#04x}",
                                self.label(),
                                p.name,
                                r.status
                            ),
                            None => {}
                        }
                    }
                }
                Ok(sent)
            }
            CLEAR => {
                let (sent, first) = self.send_on(call, send)?;
                if first.is_some() && good(&sent.result) {
                    // Every registration at the unit is gone, down every path.
                    st.key = None;
                    st.touched = true;
                    for p in self.paths() {
                        p.set_in_step(true);
                    }
                    self.tell_multipathd(&st);
                }
                Ok(sent)
            }
            PREEMPT | PREEMPT_AND_ABORT => {
                let prm = params(io, call);
                let (sent, first) = self.send_on(call, send)?;
                if let (Some(first), Some(prm), Some(own)) = (first, prm, st.key) {
                    let victim = u64::from_be_bytes(prm[8..16].try_into().unwrap());
                    if good(&sent.result) && victim == own {
                        // Preempting its own key unregistered the
                        // initiator's other nexuses: register them again.
                        for p in self.others(&first) {
                            p.set_in_step(false);
                        }
                        self.kick_checker();
                    }
                }
                Ok(sent)
            }
            _ => self.send_with(call, send),
        }
    }

    /// The usable paths other than `first`.
    fn others(&self, first: &Arc<Path>) -> Vec<Arc<Path>> {
        self.paths()
            .into_iter()
            .filter(|p| !Arc::ptr_eq(p, first) && p.usable().is_some())
            .collect()
    }

    /// After a registration down `first`: every other path registers the
    /// same key (REGISTER AND IGNORE EXISTING KEY), each SG_IO admitted by
    /// the stall rule. A path that cannot (down, refused, out of time) is
    /// out of use until the checker has brought it in step.
    fn in_step_with(&self, st: &PrState, first: &Arc<Path>, call: &mut Call<'_>) {
        first.set_in_step(true);
        let (cdb, prm) = register_ignore(st.key, st.flags);
        let mut late = false;
        for p in self.paths() {
            if Arc::ptr_eq(&p, first) {
                continue;
            }
            p.set_in_step(false);
            if p.usable_ignoring_step().is_none() {
                continue;
            }
            late = late || (call.admit)().is_err();
            if late {
                continue;
            }
            let r = sg_io_out(p.fd(), &cdb, &prm, call.timeout_ms);
            p.sent.fetch_add(1, Ordering::Relaxed);
            match path_error(&r) {
                Some(e) => self.path_failed(&p, e),
                None if good(&r) => p.set_in_step(true),
                None => log::warn!(
                    "{}: registering the key down path {} answered status {:#04x}; \
                     the path is out of use until it is brought in step",
                    self.label(),
                    p.name,
                    r.status
                ),
            }
        }
        if self.paths().iter().any(|p| !p.in_step()) {
            self.kick_checker();
        }
    }

    /// The checker's catch-up of one path that missed a change: true once
    /// it is in step, false if a change is under way (the checker never
    /// waits for one: the initiator's command may be waiting for a path
    /// the checker is to bring back). Its own commands, not the
    /// initiator's: no stall rule.
    pub fn bring_in_step(&self, p: &Path) -> Result<bool, String> {
        let Ok(mut st) = self.pr.try_lock() else {
            return Ok(false);
        };
        if let Some(k) = st.key {
            let mut buf = vec![0u8; 8192];
            let cdb = [PR_IN, 0x00, 0, 0, 0, 0, 0, 0x20, 0x00, 0];
            let r = sg_io_in(p.fd(), &cdb, &mut buf, OWN_TIMEOUT_MS);
            if !good(&r) {
                return Err(format!("READ KEYS: {}", describe(&r)));
            }
            let keys = parse_keys(&buf).unwrap_or_default();
            if !keys.contains(&k) {
                log::warn!(
                    "{}: the initiator's key {k:#x} is no longer registered at the unit \
                     (another host preempted or cleared it): path {} is not registered",
                    self.label(),
                    p.name
                );
                st.key = None;
                self.tell_multipathd(&st);
                p.set_in_step(true);
                return Ok(true);
            }
        } else if !st.touched {
            p.set_in_step(true);
            return Ok(true);
        }
        let (cdb, prm) = register_ignore(st.key, st.flags);
        let r = sg_io_out(p.fd(), &cdb, &prm, OWN_TIMEOUT_MS);
        if !good(&r) {
            return Err(format!(
                "REGISTER AND IGNORE EXISTING KEY: {}",
                describe(&r)
            ));
        }
        log::info!(
            "{}: path {} {} the initiator's key{}",
            self.label(),
            p.name,
            if st.key.is_some() {
                "registered again with"
            } else {
                "no longer holds"
            },
            st.key.map(|k| format!(" {k:#x}")).unwrap_or_default()
        );
        p.set_in_step(true);
        Ok(true)
    }

    /// Tells multipathd the key (best effort: without multipathd, or
    /// without `reservation_key file`, tcmu-sg's own catch-up does it).
    fn tell_multipathd(&self, st: &PrState) {
        for c in super::multipathd::key_commands(&self.name, st.key, st.flags & APTPL != 0) {
            match super::multipathd::command(&c) {
                Ok(a) if a == "ok" => log::debug!("{}: multipathd: {c}: ok", self.label()),
                Ok(a) => log::info!(
                    "{}: multipathd answered {a:?} to {c:?} (set `reservation_key file` in \
                     multipath.conf for multipathd to register returning paths too)",
                    self.label()
                ),
                Err(e) => {
                    log::debug!("{}: multipathd not reached ({e}): {c}", self.label());
                    break;
                }
            }
        }
    }
}

/// One line for an SG_IO result in the handler's own logs.
fn describe(r: &SgResult) -> String {
    match path_error(r) {
        Some(e) => e.to_string(),
        None if r.errno != 0 => std::io::Error::from_raw_os_error(r.errno).to_string(),
        None => format!("status {:#04x}", r.status),
    }
}

#[cfg(test)]
mod tests {
    use super::super::path::Own;
    use super::*;

    #[test]
    fn register_and_ignore_carries_the_key_and_the_kept_flags() {
        let (cdb, p) = register_ignore(Some(0x123abc), SPEC_I_PT | ALL_TG_PT | APTPL);
        assert_eq!(cdb, [0x5f, 0x06, 0, 0, 0, 0, 0, 0, 24, 0]);
        assert_eq!(&p[0..8], &[0; 8], "reservation key ignored");
        assert_eq!(&p[8..16], &0x123abcu64.to_be_bytes());
        assert_eq!(p[20], ALL_TG_PT | APTPL, "no SPEC_I_PT down other paths");
        let (_, p) = register_ignore(None, 0);
        assert_eq!(p, [0; 24]);
    }

    #[test]
    fn read_keys_data_is_parsed_within_its_length() {
        let mut d = vec![0, 0, 0, 7, 0, 0, 0, 16];
        d.extend_from_slice(&0xabcu64.to_be_bytes());
        d.extend_from_slice(&0x123abcu64.to_be_bytes());
        d.extend_from_slice(&[0xff; 16]); // beyond the length
        assert_eq!(parse_keys(&d), Some(vec![0xabc, 0x123abc]));
        // A length past the buffer: what is there.
        let mut d = vec![0, 0, 0, 1, 0, 0, 1, 0];
        d.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(parse_keys(&d), Some(vec![5]));
        assert_eq!(parse_keys(&[0, 0]), None);
    }

    #[test]
    fn only_pr_out_is_fanned_out() {
        assert!(is_pr_out(&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
        assert!(!is_pr_out(&[0x5e, 0, 0, 0, 0, 0, 0, 0, 24, 0]));
        assert!(!is_pr_out(&[]));
    }

    #[test]
    fn the_checker_never_waits_for_a_reservation_change() {
        // A PR OUT holding the lock may be waiting for a path only the
        // checker can bring back: the catch-up steps aside, and so does
        // the status report.
        let m = Multipath::new("mpatha".into(), "dm-0".into(), "/nonexistent".into(), None);
        m.add_path(Path::new(
            "sdz".into(),
            "8:240".into(),
            std::fs::File::open("/dev/null").unwrap(),
            std::time::Duration::ZERO,
        ));
        let p = m.paths()[0].clone();
        p.set_in_step(false);
        let held = m.pr.lock().unwrap();
        assert_eq!(m.bring_in_step(&p), Ok(false));
        assert!(!p.in_step());
        assert_eq!(
            m.report().reservation_key.as_deref(),
            Some("(being changed)")
        );
        drop(held);
        // Untouched, nothing to do: in step at once, without a command.
        assert_eq!(m.bring_in_step(&p), Ok(true));
        assert!(p.in_step());
    }

    #[test]
    fn own_is_not_confused_with_a_path_state() {
        // The catch-up leaves the path's own state to the checker.
        let p = Path::new(
            "sdz".into(),
            "8:240".into(),
            std::fs::File::open("/dev/null").unwrap(),
            std::time::Duration::ZERO,
        );
        p.set_in_step(false);
        assert_eq!(p.own(), Own::Up);
        assert_eq!(p.usable(), None);
        assert!(p.usable_ignoring_step().is_some());
    }
}
