//! Data direction of a CDB. The TCMU ring entry does not say which way data
//! flows, so a passthrough handler must know it from the command itself.
//!
//! The direction comes from the command table (`scsi::opcodes`), which
//! covers SPC, SBC, SSC, MMC, SMC and ZBC opcodes. Where two command sets
//! give one opcode opposite directions (UNMAP vs READ SUB-CHANNEL, ...)
//! the backing device's peripheral type decides. Variable-length (0x7F)
//! commands are looked up by service action, ATA PASS-THROUGH by its T_DIR
//! and T_LENGTH bits.
//!
//! Fallback: an opcode that is not in the table (vendor-specific ones among
//! them) is passed through when it carries no data, and refused with
//! INVALID COMMAND OPERATION CODE when it does, since guessing the direction
//! could send data-out as data-in or the reverse.

/// Which way data moves, seen from the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    None,
    /// Data-out (to the device).
    ToDevice,
    /// Data-in (from the device).
    FromDevice,
    Bidirectional,
}

use super::opcodes;

/// SCSI peripheral device types that change the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceClass {
    /// SBC: disks, RBC, optical memory, zoned, anything else.
    Block,
    /// SSC: tapes.
    Stream,
    /// MMC: CD/DVD.
    Mmc,
    /// SMC: medium changers.
    Changer,
}

impl DeviceClass {
    /// Whether READ/WRITE (6/10/12/16) address logical blocks, so that a
    /// command too large for the backing device can be split by LBA. Only
    /// SBC devices (disks, zoned disks, RBC, optical memory): a tape's
    /// READ(6)/WRITE(6) carry a transfer length and no LBA, so stream
    /// commands go whole, however large, and the device judges them; MMC
    /// drives are not split either (as QEMU's scsi-block does not).
    pub fn splits_by_lba(self) -> bool {
        self == DeviceClass::Block
    }

    /// From the peripheral device type in INQUIRY byte 0 / sysfs `type`.
    pub fn from_peripheral_type(t: u8) -> DeviceClass {
        match t & 0x1f {
            0x01 => DeviceClass::Stream,
            0x05 => DeviceClass::Mmc,
            0x08 => DeviceClass::Changer,
            _ => DeviceClass::Block,
        }
    }
}

/// Why the direction of a command could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DirectionError {
    #[error("opcode {opcode:#04x} (service action {sa:#06x}) carries data and is not in the direction table")]
    Unknown { opcode: u8, sa: u16 },
    #[error("empty CDB")]
    Empty,
}

/// The direction of `cdb` on a device of `class`, given how many bytes of
/// data the initiator attached and whether it sent bidirectional iovecs.
pub fn direction(
    cdb: &[u8],
    class: DeviceClass,
    data_len: u64,
    bidi: bool,
) -> Result<Direction, DirectionError> {
    direction_of(cdb, opcodes::lookup(cdb, class), data_len, bidi)
}

/// As `direction`, with the command's table entry already looked up
/// (`entry`: `opcodes::lookup` of `cdb` on the device's class).
pub fn direction_of(
    cdb: &[u8],
    entry: Option<opcodes::Op>,
    data_len: u64,
    bidi: bool,
) -> Result<Direction, DirectionError> {
    let &op = cdb.first().ok_or(DirectionError::Empty)?;
    if bidi {
        return Ok(Direction::Bidirectional);
    }
    if data_len == 0 {
        return Ok(Direction::None);
    }
    entry.and_then(|o| o.dir).ok_or(DirectionError::Unknown {
        opcode: op,
        sa: if op == 0x7f {
            opcodes::variable_sa(cdb)
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceClass::*;
    use Direction::{Bidirectional as Bi, FromDevice as In, None as No, ToDevice as Out};

    fn d(cdb: &[u8], class: DeviceClass) -> Result<Direction, DirectionError> {
        direction(cdb, class, 512, false)
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], DeviceClass, Direction)] = &[
            (&[0x12, 0, 0, 0, 96, 0], Block, In),              // INQUIRY
            (&[0x03, 0, 0, 0, 18, 0], Block, In),              // REQUEST SENSE
            (&[0x15, 0x10, 0, 0, 12, 0], Block, Out),          // MODE SELECT(6)
            (&[0x08, 0, 0, 0, 1, 0], Block, In),               // READ(6)
            (&[0x0a, 0, 0, 0, 1, 0], Block, Out),              // WRITE(6)
            (&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], Block, In),   // READ(10)
            (&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], Block, Out),  // WRITE(10)
            (&[0x2f, 2, 0, 0, 0, 0, 0, 0, 1, 0], Block, Out),  // VERIFY(10) BYTCHK
            (&[0x41, 0, 0, 0, 0, 0, 0, 0, 1, 0], Block, Out),  // WRITE SAME(10)
            (&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Block, Out), // UNMAP
            (&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], Mmc, In),    // READ SUB-CHANNEL
            (&[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0], Block, In),   // PR IN
            (&[0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0], Block, Out), // PR OUT
            (
                &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0],
                Block,
                Out,
            ), // CAW
            (
                &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
                Block,
                In,
            ), // RC16
            (&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], Block, In), // REPORT LUNS
            (&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], Block, In), // REPORT TPGS
            (&[0xa3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Mmc, Out), // SEND KEY
            (&[0xa4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Mmc, In), // REPORT KEY
            (&[0x34, 0, 0, 0, 0, 0, 0, 0, 20, 0], Stream, In), // READ POSITION
            (
                &[0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Stream,
                In,
            ),
            (
                &[0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                Block,
                Out,
            ),
            (&[0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Changer, In), // READ ELEMENT STATUS
            (&[0xb5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Changer, In),
            (&[0xb5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Block, Out), // SECURITY PROTOCOL OUT
            (&[0x3b, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], Block, Out),    // WRITE BUFFER
            (&[0x3c, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], Block, In),     // READ BUFFER
            (&[0x53, 0, 0, 0, 0, 0, 0, 0, 1, 0], Block, Bi),        // XDWRITEREAD(10)
        ];
        for (cdb, class, want) in cases {
            assert_eq!(d(cdb, *class).unwrap(), *want, "{cdb:02x?} on {class:?}");
        }
    }

    #[test]
    fn variable_length_by_service_action() {
        let mut c = [0u8; 32];
        c[0] = 0x7f;
        c[7] = 0x18;
        c[9] = 0x09;
        assert_eq!(d(&c, Block).unwrap(), In);
        c[9] = 0x0b;
        assert_eq!(d(&c, Block).unwrap(), Out);
        c[9] = 0x07;
        assert_eq!(d(&c, Block).unwrap(), Bi);
        c[8] = 0x18;
        assert!(d(&c, Block).is_err());
    }

    #[test]
    fn ata_passthrough_uses_t_dir_and_t_length() {
        // IDENTIFY DEVICE: PIO data-in, T_DIR=1, BYT_BLOK=1, T_LENGTH=2.
        let identify = [0x85, 0x08, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xec, 0];
        assert_eq!(d(&identify, Block).unwrap(), In);
        let write = [0x85, 0x0a, 0x06, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xca, 0];
        assert_eq!(d(&write, Block).unwrap(), Out);
        let smart12 = [0xa1, 0x08, 0x0e, 0xd0, 1, 0, 0x4f, 0xc2, 0, 0xb0, 0, 0];
        assert_eq!(d(&smart12, Block).unwrap(), In);
        let none = [0x85, 0x06, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0];
        assert_eq!(d(&none, Block).unwrap(), No);
    }

    #[test]
    fn fallback_for_unknown_opcodes() {
        // Vendor-specific opcode without data: passed as no-data.
        assert_eq!(
            direction(&[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Block, 0, false).unwrap(),
            No
        );
        // With data: refused, never guessed.
        assert_eq!(
            direction(&[0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Block, 512, false),
            Err(DirectionError::Unknown {
                opcode: 0xc0,
                sa: 0
            })
        );
        // Bidirectional iovecs mean a bidirectional command whatever the opcode.
        assert_eq!(
            direction(&[0x53, 0, 0, 0, 0, 0, 0, 0, 1, 0], Block, 512, true).unwrap(),
            Bi
        );
        assert!(direction(&[], Block, 0, false).is_err());
    }

    #[test]
    fn every_opcode_of_the_table_has_one_direction() {
        // A no-data opcode of the table stays no-data; reads never turn into
        // writes across classes except the documented conflicts.
        let conflicts = [0x42u8, 0x51, 0x81, 0xa3, 0xa4, 0xac, 0xb5, 0xbd, 0xa1];
        for op in 0u8..=0xff {
            if conflicts.contains(&op) || op == 0x85 || op == 0x7f {
                continue;
            }
            let mut cdb = [0u8; 16];
            cdb[0] = op;
            let dirs: Vec<_> = [Block, Stream, Mmc, Changer]
                .iter()
                .map(|c| d(&cdb, *c).ok())
                .collect();
            assert!(dirs.windows(2).all(|w| w[0] == w[1]), "{op:#04x}: {dirs:?}");
        }
    }
}
