//! tcmu-sg's own reasons to fail a command, and the one place they become
//! SCSI status and sense. Failures reported by the backing device are not
//! here: they pass through `scsi::sense::outcome` unchanged.

use crate::scsi::cdb::CdbError;
use crate::scsi::direction::DirectionError;
use crate::scsi::policy::{Answer, Refused};
use std::time::Duration;

use crate::scsi::sense::{code, status, Outcome, SenseCode};
use crate::tcmu::ring::BadCommand;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// The ring entry failed its checks; its data was never touched.
    #[error("malformed ring entry: {0}")]
    Ring(#[from] BadCommand),
    #[error(transparent)]
    Direction(#[from] DirectionError),
    #[error(transparent)]
    Cdb(#[from] CdbError),
    /// The device's command policy or read-only mode refused the command;
    /// the backing device never saw it.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// SG_IO v3 has no bidirectional transfers.
    #[error("bidirectional commands are not supported")]
    Bidirectional,
    /// Protection information cannot be split across chunks.
    #[error("command with protection information (xPROTECT={0}) exceeds the transfer limit")]
    ProtectedSplit(u8),
    /// DIF iovecs are not passed through.
    #[error("commands with DIF iovecs are not supported")]
    Dif,
    /// The device has no usable backing device.
    #[error("device not ready: {0}")]
    NotReady(String),
    /// The backing device went away and is being opened again.
    #[error("backing device lost: {0}")]
    Lost(String),
    /// The command may no longer start: LIO may fail it back (or have
    /// failed it back) before an SG_IO could end (see `crate::expiry`).
    /// Answered BUSY without touching the backing device; if LIO still
    /// holds the command, the initiator retries it.
    #[error("waited {waited:?} since the ring read before it; too late to start")]
    Expired { waited: Duration },
    /// No path of the multipath map could take the command for as long as
    /// it could wait (its SG_IO timeout, where commands never expire).
    #[error("no usable path of map {map} for {waited:?}")]
    NoPath { map: String, waited: Duration },
}

impl CmdError {
    /// The sense the initiator gets with CHECK CONDITION, for the errors
    /// answered so (None: answered with a status alone).
    pub fn sense_code(&self) -> Option<SenseCode> {
        Some(match self {
            CmdError::Ring(_) => code::TARGET_FAILURE,
            CmdError::Direction(DirectionError::Unknown { .. }) => code::INVALID_OPCODE,
            CmdError::Direction(DirectionError::Empty) => code::INVALID_OPCODE,
            CmdError::Cdb(CdbError::TooShort { .. }) => code::INVALID_FIELD,
            CmdError::Refused(r) => match r.answer {
                Answer::Opcode => code::INVALID_OPCODE,
                Answer::Field => code::INVALID_FIELD,
                Answer::WriteProtected => code::WRITE_PROTECTED,
            },
            CmdError::Cdb(CdbError::Overflow { .. }) => LBA_OUT_OF_RANGE,
            CmdError::Bidirectional => code::INVALID_OPCODE,
            CmdError::ProtectedSplit(_) | CmdError::Dif => code::INVALID_FIELD,
            CmdError::NotReady(_) => code::NOT_READY_MANUAL_INTERVENTION,
            CmdError::Lost(_) | CmdError::NoPath { .. } => code::LUN_NOT_RESPONDING,
            CmdError::Expired { .. } => return None,
        })
    }

    pub fn outcome(&self) -> Outcome {
        match self.sense_code() {
            Some(c) => Outcome::check(c),
            None => Outcome::with_status(status::BUSY),
        }
    }
}

const LBA_OUT_OF_RANGE: SenseCode =
    SenseCode::new(crate::scsi::sense::key::ILLEGAL_REQUEST, 0x21, 0x00);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_check_condition_with_sense() {
        let errs = [
            CmdError::Ring(BadCommand::CdbOffset(1)),
            CmdError::Direction(DirectionError::Unknown {
                opcode: 0xc0,
                sa: 0,
            }),
            CmdError::Cdb(CdbError::TooShort {
                opcode: 0x28,
                have: 3,
                need: 10,
            }),
            CmdError::Cdb(CdbError::Overflow {
                lba: u64::MAX,
                blocks: 2,
            }),
            CmdError::Bidirectional,
            CmdError::Refused(Refused {
                opcode: 0x04,
                action: None,
                name: "FORMAT UNIT",
                answer: Answer::Opcode,
                grant: None,
            }),
            CmdError::ProtectedSplit(1),
            CmdError::Dif,
            CmdError::NotReady("x".into()),
            CmdError::Lost("x".into()),
            CmdError::NoPath {
                map: "mpatha".into(),
                waited: Duration::from_secs(20),
            },
        ];
        for e in errs {
            let o = e.outcome();
            assert_eq!(o.status, status::CHECK_CONDITION);
            assert!(e.sense_code().is_some());
            assert_eq!(o.sense_code(), e.sense_code(), "{e}");
        }
        assert_eq!(
            CmdError::ProtectedSplit(1).sense_code(),
            Some(code::INVALID_FIELD)
        );
        assert_eq!(
            CmdError::NotReady("x".into()).sense_code().map(|c| c.key),
            Some(0x2)
        );
        assert_eq!(
            CmdError::Lost("x".into()).sense_code(),
            Some(code::LUN_NOT_RESPONDING)
        );
        // A map without a path answers as a lost unit, never as a medium
        // error: the initiator (or its own multipath) tries again.
        let e = CmdError::NoPath {
            map: "mpatha".into(),
            waited: Duration::from_secs(20),
        };
        assert_eq!(e.sense_code(), Some(code::LUN_NOT_RESPONDING));
    }

    #[test]
    fn a_refusal_answers_as_its_kind_says() {
        let r = |answer| {
            CmdError::Refused(Refused {
                opcode: 0x3b,
                action: Some(5),
                name: "WRITE BUFFER",
                answer,
                grant: None,
            })
            .sense_code()
        };
        assert_eq!(r(Answer::Opcode), Some(code::INVALID_OPCODE));
        assert_eq!(r(Answer::Field), Some(code::INVALID_FIELD));
        let wp = r(Answer::WriteProtected).unwrap();
        assert_eq!((wp.key, wp.asc, wp.ascq), (0x7, 0x27, 0x00));
    }

    #[test]
    fn a_command_too_late_to_start_is_busy_without_sense() {
        let o = CmdError::Expired {
            waited: Duration::from_secs(15),
        }
        .outcome();
        assert_eq!(o.status, status::BUSY);
        assert_eq!(o.sense, [0; 96]);
    }
}
