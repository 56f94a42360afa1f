//! The one function that decides whether an SG_IO down a path of a map
//! failed because of the path (send it again down another) or is the
//! logical unit's own answer (pass it to the initiator unchanged).
//!
//! - The unit's answer: any status the device returned with the transport
//!   intact, CHECK CONDITION with its sense, RESERVATION CONFLICT, BUSY and
//!   TASK SET FULL included, except the three that describe the target
//!   port rather than the unit (below). Also the host codes the midlayer
//!   derives from the device's own answer, which dm-multipath does not
//!   retry either (`blk_path_error`): DID_TARGET_FAILURE,
//!   DID_NEXUS_FAILURE (a reservation conflict), DID_ALLOC_FAILURE,
//!   DID_MEDIUM_ERROR. And an ioctl error that says nothing about the path
//!   (EINVAL, ENOMEM: this request would fail on any path).
//! - The path's fault: the ioctl found the path's device offline or gone
//!   (ENODEV, ENXIO); every other host code (the transport dropped,
//!   timed out, reset or aborted the command: DID_NO_CONNECT,
//!   DID_TRANSPORT_DISRUPTED, DID_TRANSPORT_FAILFAST, DID_TIME_OUT, ...);
//!   a driver timeout; and the target port's own state, CHECK CONDITION
//!   NOT READY with ASC 04h and ASCQ 0Ah/0Bh/0Ch (asymmetric access state
//!   transition, target port in standby, in unavailable state) or ILLEGAL
//!   REQUEST 25h/00h (the unit is not reachable through this port).
//!
//! A write that failed with a path error may or may not have reached the
//! unit; sending it again down another path is what dm-multipath does
//! with every request, and a write is idempotent. Its answer is never
//! turned into a medium error.

use crate::scsi::sense::{decode, host, key, status, SgResult, DRIVER_TIMEOUT};

/// Why an SG_IO is the path's fault, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The ioctl found the path's SCSI device offline or removed.
    Gone(i32),
    /// The transport failed the command (a `DID_*` host code).
    Transport(u16),
    /// The command timed out on the path.
    Timeout,
    /// The target port is in transition, standby or unavailable, or does
    /// not lead to the unit.
    PortState(u8, u8, u8),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            PathError::Gone(e) => write!(f, "{}", std::io::Error::from_raw_os_error(e)),
            PathError::Transport(h) => write!(f, "host status {}", host_name(h)),
            PathError::Timeout => write!(f, "timed out"),
            PathError::PortState(k, a, q) => {
                write!(f, "target port answered sense {k:x}/{a:02x}/{q:02x}")
            }
        }
    }
}

fn host_name(h: u16) -> String {
    let n = match h {
        host::NO_CONNECT => "DID_NO_CONNECT",
        host::BUS_BUSY => "DID_BUS_BUSY",
        host::TIME_OUT => "DID_TIME_OUT",
        host::BAD_TARGET => "DID_BAD_TARGET",
        host::ABORT => "DID_ABORT",
        host::PARITY => "DID_PARITY",
        host::ERROR => "DID_ERROR",
        host::RESET => "DID_RESET",
        host::SOFT_ERROR => "DID_SOFT_ERROR",
        host::IMM_RETRY => "DID_IMM_RETRY",
        host::REQUEUE => "DID_REQUEUE",
        host::TRANSPORT_DISRUPTED => "DID_TRANSPORT_DISRUPTED",
        host::TRANSPORT_FAILFAST => "DID_TRANSPORT_FAILFAST",
        0x14 => "DID_TRANSPORT_MARGINAL",
        _ => return format!("{h:#04x}"),
    };
    n.to_string()
}

/// The verdict on one SG_IO down a path: `None` is the unit's answer.
pub fn path_error(r: &SgResult) -> Option<PathError> {
    if r.errno != 0 {
        return matches!(r.errno, libc::ENODEV | libc::ENXIO).then_some(PathError::Gone(r.errno));
    }
    match r.host_status {
        host::OK => {}
        host::TARGET_FAILURE | host::NEXUS_FAILURE | host::ALLOC_FAILURE | host::MEDIUM_ERROR => {
            return None
        }
        h => return Some(PathError::Transport(h)),
    }
    if r.driver_status & 0x0f == DRIVER_TIMEOUT {
        return Some(PathError::Timeout);
    }
    if r.status != status::CHECK_CONDITION {
        return None;
    }
    let n = (r.sb_len_wr as usize).min(r.sense.len());
    let c = decode(&r.sense[..n])?;
    let port = (c.key == key::NOT_READY && c.asc == 0x04 && matches!(c.ascq, 0x0a..=0x0c))
        || (c.key == key::ILLEGAL_REQUEST && c.asc == 0x25 && c.ascq == 0x00);
    port.then_some(PathError::PortState(c.key, c.asc, c.ascq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::fixed_sense;
    use crate::scsi::sense::SenseCode;

    fn host_r(h: u16) -> SgResult {
        SgResult {
            host_status: h,
            ..SgResult::good()
        }
    }

    fn check(key: u8, asc: u8, ascq: u8) -> SgResult {
        SgResult::check_condition(&fixed_sense(SenseCode::new(key, asc, ascq))[..18])
    }

    #[test]
    fn the_units_own_answers_are_not_path_errors() {
        for st in [
            status::GOOD,
            status::CONDITION_MET,
            status::BUSY,
            status::RESERVATION_CONFLICT,
            status::TASK_SET_FULL,
            status::ACA_ACTIVE,
            status::TASK_ABORTED,
        ] {
            let r = SgResult {
                status: st,
                ..SgResult::good()
            };
            assert_eq!(path_error(&r), None, "status {st:#x}");
        }
        // CHECK CONDITION of every kind the unit may give: medium and
        // hardware errors, illegal requests, unit attentions, not ready
        // while becoming ready, data protect, aborted command.
        for (k, a, q) in [
            (0x3, 0x11, 0x00),
            (0x4, 0x44, 0x00),
            (0x5, 0x20, 0x00),
            (0x5, 0x24, 0x00),
            (0x5, 0x21, 0x00),
            (0x6, 0x29, 0x00),
            (0x6, 0x2a, 0x06),
            (0x2, 0x04, 0x01),
            (0x2, 0x3a, 0x00),
            (0x7, 0x27, 0x00),
            (0xb, 0x47, 0x00),
            (0x1, 0x17, 0x01),
        ] {
            assert_eq!(path_error(&check(k, a, q)), None, "{k:x}/{a:x}/{q:x}");
        }
        // Descriptor-format sense is read the same way.
        let mut d = [0u8; 8];
        d[0] = 0x72;
        d[1] = 0x03;
        d[2] = 0x11;
        assert_eq!(path_error(&SgResult::check_condition(&d)), None);
        // CHECK CONDITION without sense: the unit's (it gets sense of ours).
        let r = SgResult {
            status: status::CHECK_CONDITION,
            ..SgResult::good()
        };
        assert_eq!(path_error(&r), None);
        // Host codes derived from the unit's answer.
        for h in [
            host::TARGET_FAILURE,
            host::NEXUS_FAILURE,
            host::ALLOC_FAILURE,
            host::MEDIUM_ERROR,
        ] {
            assert_eq!(path_error(&host_r(h)), None, "host {h:#x}");
        }
        // An ioctl error this request would meet on any path.
        for e in [libc::EINVAL, libc::ENOMEM, libc::EFAULT, libc::EIO] {
            assert_eq!(path_error(&SgResult::from_errno(e)), None, "errno {e}");
        }
    }

    #[test]
    fn transport_failures_are_path_errors() {
        for h in [
            host::NO_CONNECT,
            host::BUS_BUSY,
            host::TIME_OUT,
            host::BAD_TARGET,
            host::ABORT,
            host::PARITY,
            host::ERROR,
            host::RESET,
            host::SOFT_ERROR,
            host::IMM_RETRY,
            host::REQUEUE,
            host::TRANSPORT_DISRUPTED,
            host::TRANSPORT_FAILFAST,
            0x14,
        ] {
            assert_eq!(
                path_error(&host_r(h)),
                Some(PathError::Transport(h)),
                "host {h:#x}"
            );
            // Whatever the status byte says.
            let mut r = check(0x3, 0x11, 0);
            r.host_status = h;
            assert!(path_error(&r).is_some());
        }
        assert_eq!(
            path_error(&SgResult::from_errno(libc::ENODEV)),
            Some(PathError::Gone(libc::ENODEV))
        );
        assert_eq!(
            path_error(&SgResult::from_errno(libc::ENXIO)),
            Some(PathError::Gone(libc::ENXIO))
        );
        let r = SgResult {
            driver_status: DRIVER_TIMEOUT,
            ..SgResult::good()
        };
        assert_eq!(path_error(&r), Some(PathError::Timeout));
        assert_eq!(
            PathError::Transport(host::TRANSPORT_DISRUPTED).to_string(),
            "host status DID_TRANSPORT_DISRUPTED"
        );
    }

    #[test]
    fn the_target_ports_state_is_a_path_error() {
        for q in [0x0a, 0x0b, 0x0c] {
            assert_eq!(
                path_error(&check(0x2, 0x04, q)),
                Some(PathError::PortState(0x2, 0x04, q))
            );
        }
        assert!(path_error(&check(0x5, 0x25, 0x00)).is_some());
        // Neighbours that are the unit's: becoming ready, not reachable
        // for another reason.
        assert_eq!(path_error(&check(0x2, 0x04, 0x02)), None);
        assert_eq!(path_error(&check(0x2, 0x04, 0x0d)), None);
        assert_eq!(path_error(&check(0x5, 0x25, 0x01)), None);
    }
}
