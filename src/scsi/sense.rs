//! What the initiator sees: the one mapping from an SG_IO result to a SCSI
//! status, sense and residual, and the one mapping from tcmu-sg's own errors
//! to sense. The backing device's status byte and sense bytes pass unchanged;
//! only transport and driver failures are turned into sense of our own,
//! following QEMU's `scsi_sense_from_host_status` and
//! `scsi_sense_from_errno`.

use crate::tcmu::abi::SENSE_BUFFERSIZE;

/// SCSI status codes (SAM-5).
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const CONDITION_MET: u8 = 0x04;
    pub const BUSY: u8 = 0x08;
    pub const RESERVATION_CONFLICT: u8 = 0x18;
    pub const TASK_SET_FULL: u8 = 0x28;
    pub const ACA_ACTIVE: u8 = 0x30;
    pub const TASK_ABORTED: u8 = 0x40;
}

/// Sense keys.
pub mod key {
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
}

/// Linux host byte values (`DID_*`) reported in `sg_io_hdr.host_status`.
pub mod host {
    pub const OK: u16 = 0x00;
    pub const NO_CONNECT: u16 = 0x01;
    pub const BUS_BUSY: u16 = 0x02;
    pub const TIME_OUT: u16 = 0x03;
    pub const BAD_TARGET: u16 = 0x04;
    pub const ABORT: u16 = 0x05;
    pub const PARITY: u16 = 0x06;
    pub const ERROR: u16 = 0x07;
    pub const RESET: u16 = 0x08;
    pub const BAD_INTR: u16 = 0x09;
    pub const PASSTHROUGH: u16 = 0x0a;
    pub const SOFT_ERROR: u16 = 0x0b;
    pub const IMM_RETRY: u16 = 0x0c;
    pub const REQUEUE: u16 = 0x0d;
    pub const TRANSPORT_DISRUPTED: u16 = 0x0e;
    pub const TRANSPORT_FAILFAST: u16 = 0x0f;
    pub const TARGET_FAILURE: u16 = 0x10;
    pub const NEXUS_FAILURE: u16 = 0x11;
    pub const ALLOC_FAILURE: u16 = 0x12;
    pub const MEDIUM_ERROR: u16 = 0x13;
}

/// `driver_status` low nibble value for a timeout (`SG_ERR_DRIVER_TIMEOUT`).
pub const DRIVER_TIMEOUT: u16 = 0x06;

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenseCode {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl SenseCode {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        SenseCode { key, asc, ascq }
    }
}

pub mod code {
    use super::{key::*, SenseCode};
    pub const LUN_NOT_RESPONDING: SenseCode = SenseCode::new(NOT_READY, 0x05, 0x00);
    pub const NOT_READY_MANUAL_INTERVENTION: SenseCode = SenseCode::new(NOT_READY, 0x04, 0x03);
    pub const NO_MEDIUM: SenseCode = SenseCode::new(NOT_READY, 0x3a, 0x00);
    pub const READ_ERROR: SenseCode = SenseCode::new(MEDIUM_ERROR, 0x11, 0x00);
    pub const TARGET_FAILURE: SenseCode = SenseCode::new(HARDWARE_ERROR, 0x44, 0x00);
    pub const INVALID_OPCODE: SenseCode = SenseCode::new(ILLEGAL_REQUEST, 0x20, 0x00);
    pub const INVALID_FIELD: SenseCode = SenseCode::new(ILLEGAL_REQUEST, 0x24, 0x00);
    pub const RESET: SenseCode = SenseCode::new(UNIT_ATTENTION, 0x29, 0x00);
    pub const I_T_NEXUS_LOSS: SenseCode = SenseCode::new(UNIT_ATTENTION, 0x29, 0x07);
    pub const WRITE_PROTECTED: SenseCode = SenseCode::new(DATA_PROTECT, 0x27, 0x00);
    pub const SPACE_ALLOC_FAILED: SenseCode = SenseCode::new(DATA_PROTECT, 0x27, 0x07);
    pub const COMMAND_ABORTED: SenseCode = SenseCode::new(ABORTED_COMMAND, 0x00, 0x00);
    pub const IO_ERROR: SenseCode = SenseCode::new(ABORTED_COMMAND, 0x00, 0x06);
    pub const LUN_COMM_FAILURE: SenseCode = SenseCode::new(ABORTED_COMMAND, 0x08, 0x00);
    pub const COMMAND_TIMEOUT: SenseCode = SenseCode::new(ABORTED_COMMAND, 0x2e, 0x02);
}

/// What one SG_IO call returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgResult {
    /// errno of a failed ioctl (0 when the ioctl succeeded).
    pub errno: i32,
    pub status: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub sense: [u8; SENSE_BUFFERSIZE],
    pub sb_len_wr: u8,
    pub resid: i32,
}

impl SgResult {
    pub fn good() -> Self {
        SgResult {
            errno: 0,
            status: status::GOOD,
            host_status: host::OK,
            driver_status: 0,
            sense: [0; SENSE_BUFFERSIZE],
            sb_len_wr: 0,
            resid: 0,
        }
    }

    pub fn from_errno(errno: i32) -> Self {
        SgResult {
            errno,
            ..SgResult::good()
        }
    }

    /// A CHECK CONDITION with the given raw sense bytes.
    pub fn check_condition(sense: &[u8]) -> Self {
        let mut r = SgResult::good();
        r.status = status::CHECK_CONDITION;
        let n = sense.len().min(SENSE_BUFFERSIZE);
        r.sense[..n].copy_from_slice(&sense[..n]);
        r.sb_len_wr = n as u8;
        r
    }
}

/// The result of a command as the initiator will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u8,
    /// Sense bytes; meaningful only with CHECK CONDITION.
    pub sense: [u8; SENSE_BUFFERSIZE],
    /// Bytes of the data buffer not transferred.
    pub residual: u64,
}

impl Outcome {
    pub fn good() -> Self {
        Outcome {
            status: status::GOOD,
            sense: [0; SENSE_BUFFERSIZE],
            residual: 0,
        }
    }

    pub fn with_status(status: u8) -> Self {
        Outcome {
            status,
            ..Outcome::good()
        }
    }

    /// CHECK CONDITION with fixed-format sense built from `code`.
    pub fn check(code: SenseCode) -> Self {
        Outcome {
            status: status::CHECK_CONDITION,
            sense: fixed_sense(code),
            residual: 0,
        }
    }

    pub fn is_good(&self) -> bool {
        self.status == status::GOOD || self.status == status::CONDITION_MET
    }

    /// Key/ASC/ASCQ of the sense, fixed or descriptor format.
    pub fn sense_code(&self) -> Option<SenseCode> {
        decode(&self.sense)
    }
}

/// Fixed-format sense data (SPC-4 4.5.3), 18 bytes in a 96-byte buffer.
pub fn fixed_sense(c: SenseCode) -> [u8; SENSE_BUFFERSIZE] {
    let mut s = [0u8; SENSE_BUFFERSIZE];
    s[0] = 0x70;
    s[2] = c.key & 0x0f;
    s[7] = 10;
    s[12] = c.asc;
    s[13] = c.ascq;
    s
}

/// Decodes key/ASC/ASCQ from fixed (0x70/0x71) or descriptor (0x72/0x73)
/// sense.
pub fn decode(s: &[u8]) -> Option<SenseCode> {
    match s.first()? & 0x7f {
        0x70 | 0x71 if s.len() >= 14 => Some(SenseCode::new(s[2] & 0xf, s[12], s[13])),
        0x72 | 0x73 if s.len() >= 4 => Some(SenseCode::new(s[1] & 0xf, s[2], s[3])),
        _ => None,
    }
}

/// Length of the meaningful part of sense data (8 + additional length).
pub fn sense_len(s: &[u8]) -> usize {
    match s.first().map(|b| b & 0x7f) {
        Some(0x70..=0x73) if s.len() >= 8 => (8 + s[7] as usize).min(s.len()),
        _ => 0,
    }
}

/// `scsi_sense_from_errno`: a failed SG_IO ioctl.
fn from_errno(errno: i32) -> Outcome {
    match errno {
        libc::EDOM => Outcome::with_status(status::TASK_SET_FULL),
        libc::EBADE => Outcome::with_status(status::RESERVATION_CONFLICT),
        libc::ENODATA => Outcome::check(code::READ_ERROR),
        libc::EREMOTEIO | libc::ENOMEM => Outcome::check(code::TARGET_FAILURE),
        libc::ENOMEDIUM => Outcome::check(code::NO_MEDIUM),
        libc::EINVAL => Outcome::check(code::INVALID_FIELD),
        libc::ENOSPC => Outcome::check(code::SPACE_ALLOC_FAILED),
        // A device that went away (ENXIO/ENODEV) answers like an absent LUN.
        libc::ENXIO | libc::ENODEV => Outcome::check(code::LUN_NOT_RESPONDING),
        _ => Outcome::check(code::IO_ERROR),
    }
}

/// `scsi_sense_from_host_status`: the HBA or transport failed the command.
fn from_host_status(h: u16) -> Outcome {
    match h {
        host::NO_CONNECT => Outcome::check(code::LUN_NOT_RESPONDING),
        host::BUS_BUSY => Outcome::with_status(status::BUSY),
        host::TIME_OUT => Outcome::check(code::COMMAND_TIMEOUT),
        host::BAD_TARGET => Outcome::check(code::LUN_COMM_FAILURE),
        host::ABORT => Outcome::check(code::COMMAND_ABORTED),
        host::RESET => Outcome::check(code::RESET),
        host::TRANSPORT_DISRUPTED => Outcome::check(code::I_T_NEXUS_LOSS),
        host::TARGET_FAILURE => Outcome::check(code::TARGET_FAILURE),
        host::NEXUS_FAILURE => Outcome::with_status(status::RESERVATION_CONFLICT),
        host::ALLOC_FAILURE => Outcome::check(code::SPACE_ALLOC_FAILED),
        host::MEDIUM_ERROR => Outcome::check(code::READ_ERROR),
        // DID_IMM_RETRY / DID_REQUEUE: the initiator should simply retry.
        host::IMM_RETRY | host::REQUEUE | host::SOFT_ERROR => Outcome::with_status(status::BUSY),
        _ => Outcome::check(code::IO_ERROR),
    }
}

/// The one mapping from an SG_IO result to what the initiator sees.
///
/// `dxfer_len` is the number of bytes the SG_IO call asked to move, so the
/// residual can be clamped to it.
impl SgResult {
    /// Whether the result says the backing device itself is gone (deleted,
    /// disconnected), as opposed to failing a command: its path should be
    /// opened again.
    pub fn device_gone(&self) -> Option<&'static str> {
        match (self.errno, self.host_status) {
            (libc::ENODEV, _) => Some("ENODEV"),
            (libc::ENXIO, _) => Some("ENXIO"),
            (0, host::NO_CONNECT) => Some("DID_NO_CONNECT"),
            _ => None,
        }
    }
}

pub fn outcome(r: &SgResult, dxfer_len: u64) -> Outcome {
    let residual = (r.resid.max(0) as u64).min(dxfer_len);
    if r.errno != 0 {
        // Nothing reached the device; nothing was transferred.
        return Outcome {
            residual: dxfer_len,
            ..from_errno(r.errno)
        };
    }
    if r.host_status != host::OK {
        return Outcome {
            residual,
            ..from_host_status(r.host_status)
        };
    }
    if r.driver_status & 0x0f == DRIVER_TIMEOUT {
        return Outcome {
            residual,
            ..Outcome::with_status(status::BUSY)
        };
    }
    let mut o = Outcome {
        status: r.status,
        sense: [0; SENSE_BUFFERSIZE],
        residual,
    };
    if r.status == status::CHECK_CONDITION {
        let n = (r.sb_len_wr as usize).min(SENSE_BUFFERSIZE);
        if n == 0 || decode(&r.sense[..n]).is_none() {
            // Never CHECK CONDITION without (well-formed) sense.
            o.sense = fixed_sense(code::IO_ERROR);
        } else {
            o.sense[..n].copy_from_slice(&r.sense[..n]);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sg(status: u8, host: u16, driver: u16) -> SgResult {
        SgResult {
            status,
            host_status: host,
            driver_status: driver,
            ..SgResult::good()
        }
    }

    #[test]
    fn device_status_passes_unchanged() {
        for st in [
            status::GOOD,
            status::CONDITION_MET,
            status::BUSY,
            status::RESERVATION_CONFLICT,
            status::TASK_SET_FULL,
            status::ACA_ACTIVE,
            status::TASK_ABORTED,
        ] {
            let o = outcome(&sg(st, 0, 0), 4096);
            assert_eq!(o.status, st);
            assert_eq!(o.sense, [0; 96]);
        }
    }

    #[test]
    fn check_condition_sense_is_copied_byte_for_byte() {
        // scsi_debug's medium error: fixed format with INFORMATION set.
        let sense = [
            0xf0, 0, 0x03, 0, 0, 0x12, 0x34, 0x0a, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0,
        ];
        let mut r = SgResult::check_condition(&sense);
        r.resid = 4096;
        let o = outcome(&r, 8192);
        assert_eq!(o.status, status::CHECK_CONDITION);
        assert_eq!(&o.sense[..18], &sense);
        assert!(o.sense[18..].iter().all(|b| *b == 0));
        assert_eq!(o.residual, 4096);
        assert_eq!(o.sense_code(), Some(code::READ_ERROR));
        // Descriptor format, 96 bytes: all of it.
        let mut d = [0u8; 96];
        d[0] = 0x72;
        d[1] = 0x05;
        d[2] = 0x24;
        d[7] = 88;
        d[95] = 0xaa;
        let o = outcome(&SgResult::check_condition(&d), 0);
        assert_eq!(o.sense, d);
    }

    #[test]
    fn check_condition_without_sense_gets_sense() {
        let o = outcome(&sg(status::CHECK_CONDITION, 0, 0x08), 512);
        assert_eq!(o.status, status::CHECK_CONDITION);
        assert_eq!(o.sense_code(), Some(code::IO_ERROR));
        // Garbage sense (bad response code) is replaced too.
        let o = outcome(&SgResult::check_condition(&[0x00, 0x00, 0x05]), 512);
        assert_eq!(o.sense_code(), Some(code::IO_ERROR));
    }

    #[test]
    fn host_status_table() {
        use status::*;
        let table: &[(u16, u8, Option<SenseCode>)] = &[
            (
                host::NO_CONNECT,
                CHECK_CONDITION,
                Some(code::LUN_NOT_RESPONDING),
            ),
            (host::BUS_BUSY, BUSY, None),
            (host::TIME_OUT, CHECK_CONDITION, Some(code::COMMAND_TIMEOUT)),
            (
                host::BAD_TARGET,
                CHECK_CONDITION,
                Some(code::LUN_COMM_FAILURE),
            ),
            (host::ABORT, CHECK_CONDITION, Some(code::COMMAND_ABORTED)),
            (host::ERROR, CHECK_CONDITION, Some(code::IO_ERROR)),
            (host::RESET, CHECK_CONDITION, Some(code::RESET)),
            (
                host::TRANSPORT_DISRUPTED,
                CHECK_CONDITION,
                Some(code::I_T_NEXUS_LOSS),
            ),
            (
                host::TRANSPORT_FAILFAST,
                CHECK_CONDITION,
                Some(code::IO_ERROR),
            ),
            (
                host::TARGET_FAILURE,
                CHECK_CONDITION,
                Some(code::TARGET_FAILURE),
            ),
            (host::NEXUS_FAILURE, RESERVATION_CONFLICT, None),
            (
                host::ALLOC_FAILURE,
                CHECK_CONDITION,
                Some(code::SPACE_ALLOC_FAILED),
            ),
            (host::MEDIUM_ERROR, CHECK_CONDITION, Some(code::READ_ERROR)),
            (host::IMM_RETRY, BUSY, None),
            (host::PARITY, CHECK_CONDITION, Some(code::IO_ERROR)),
        ];
        for (h, st, sc) in table {
            // A host failure wins over whatever the status byte says.
            let o = outcome(&sg(status::GOOD, *h, 0), 512);
            assert_eq!(o.status, *st, "host {h:#x}");
            assert_eq!(o.sense_code(), *sc, "host {h:#x}");
        }
    }

    #[test]
    fn errno_table() {
        use status::*;
        let table: &[(i32, u8, Option<SenseCode>)] = &[
            (libc::EDOM, TASK_SET_FULL, None),
            (libc::EBADE, RESERVATION_CONFLICT, None),
            (libc::ENODATA, CHECK_CONDITION, Some(code::READ_ERROR)),
            (libc::EREMOTEIO, CHECK_CONDITION, Some(code::TARGET_FAILURE)),
            (libc::ENOMEM, CHECK_CONDITION, Some(code::TARGET_FAILURE)),
            (libc::ENOMEDIUM, CHECK_CONDITION, Some(code::NO_MEDIUM)),
            (libc::EINVAL, CHECK_CONDITION, Some(code::INVALID_FIELD)),
            (
                libc::ENOSPC,
                CHECK_CONDITION,
                Some(code::SPACE_ALLOC_FAILED),
            ),
            (
                libc::ENODEV,
                CHECK_CONDITION,
                Some(code::LUN_NOT_RESPONDING),
            ),
            (libc::EIO, CHECK_CONDITION, Some(code::IO_ERROR)),
            (libc::EPERM, CHECK_CONDITION, Some(code::IO_ERROR)),
        ];
        for (e, st, sc) in table {
            let o = outcome(&SgResult::from_errno(*e), 4096);
            assert_eq!(o.status, *st, "errno {e}");
            assert_eq!(o.sense_code(), *sc, "errno {e}");
            assert_eq!(o.residual, 4096, "nothing moved on errno {e}");
        }
    }

    #[test]
    fn driver_timeout_is_busy_and_residual_is_clamped() {
        let o = outcome(&sg(status::GOOD, 0, DRIVER_TIMEOUT), 512);
        assert_eq!(o.status, status::BUSY);
        let mut r = SgResult::good();
        r.resid = 1 << 20;
        assert_eq!(outcome(&r, 512).residual, 512);
        r.resid = -5;
        assert_eq!(outcome(&r, 512).residual, 0);
    }

    #[test]
    fn decode_and_len() {
        let s = fixed_sense(code::INVALID_FIELD);
        assert_eq!(decode(&s), Some(code::INVALID_FIELD));
        assert_eq!(sense_len(&s), 18);
        assert_eq!(sense_len(&[0u8; 18]), 0);
    }
}
