//! The one table of the commands tcmu-sg knows: for each opcode, by the
//! backing device's class and, where they decide, by service action or
//! mode, which way its data goes and what it does. The direction
//! (`scsi::direction`) and the command policy (`scsi::policy`) both read
//! it; an opcode that means different things in two command sets is
//! judged by the device's class.
//!
//! Sources: SPC-6, SBC-5, SSC-5, SMC-3, ZBC-2, MMC-6 and SAT-5 (ATA
//! PASS-THROUGH); where a command set obsoleted an opcode that another
//! still defines (XDWRITE, XPWRITE, REBUILD, REGENERATE), the direction is
//! kept so that `policy=full` passes it as before, and the effect is
//! `Unlisted`, so `standard` refuses it.

use super::direction::DeviceClass::{self, Changer, Mmc, Stream};
use super::direction::Direction::{
    self, Bidirectional as Bi, FromDevice as In, None as No, ToDevice as Out,
};

/// What a command does, as the policy judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Reads the medium (READ, VERIFY, READ LONG, READ ATTRIBUTE, ...).
    Read,
    /// Changes the medium's data (WRITE*, WRITE SAME, UNMAP, COMPARE AND
    /// WRITE, WRITE FILEMARKS, ERASE, WRITE ATTRIBUTE, ...).
    Write,
    /// Identity, state, capacity, sense, logs (INQUIRY, MODE SENSE, ...).
    Info,
    /// The device's volatile cache (SYNCHRONIZE CACHE, PRE-FETCH).
    Cache,
    /// Reservations (PERSISTENT RESERVE IN/OUT, RESERVE/RELEASE).
    Reserve,
    /// Medium motion and loading: tape positioning, load and eject, a
    /// changer's moves, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.
    Motion,
    /// A zone's state (OPEN, CLOSE, FINISH, RESET WRITE POINTER,
    /// ZONE ACTIVATE).
    Zone,
    /// Settings every host of the device shares: MODE SELECT, LOG SELECT.
    Settings,
    /// Microcode download (WRITE BUFFER download modes).
    Firmware,
    /// Erases or reformats the whole medium: FORMAT UNIT, SANITIZE,
    /// FORMAT MEDIUM, REASSIGN BLOCKS, BLANK, REMOVE ELEMENT AND TRUNCATE.
    Format,
    /// SECURITY PROTOCOL OUT (locking, passwords).
    Security,
    /// ATA PASS-THROUGH: the drive's own command set.
    Ata,
    /// Vendor-specific opcodes (0xC0-0xFF).
    Vendor,
    /// Diagnostics that act: SEND DIAGNOSTIC, WRITE BUFFER's data and
    /// echo modes, WRITE LONG (marks blocks uncorrectable), BACKGROUND
    /// CONTROL.
    Diag,
    /// Settings of the logical unit or target port: MAINTENANCE OUT's
    /// SET DEVICE IDENTIFIER, SET TARGET PORT GROUPS, SET TIMESTAMP, ...;
    /// ACCESS CONTROL OUT.
    Admin,
    /// Third-party copy (EXTENDED COPY, POPULATE TOKEN, WRITE USING
    /// TOKEN): data moved by the device, possibly to or from another.
    Copy,
    /// A known opcode with a service action or mode the table does not
    /// list, or an obsolete one.
    Unlisted,
}

/// One command of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub name: &'static str,
    /// Which way its data goes when it carries any (`None`: cannot be
    /// told, refused when it carries data).
    pub dir: Option<Direction>,
    pub effect: Effect,
    /// The service action or mode this entry was picked by, for an opcode
    /// whose entries differ by one (WRITE BUFFER's MODE, MAINTENANCE
    /// IN/OUT, ...).
    pub action: Option<u16>,
}

const fn op(name: &'static str, dir: Direction, effect: Effect) -> Op {
    Op {
        name,
        dir: Some(dir),
        effect,
        action: None,
    }
}

/// `o`, picked by service action or mode `action`.
fn by(action: u16, o: Op) -> Op {
    Op {
        action: Some(action),
        ..o
    }
}

use Effect::*;

/// The name of an opcode obsolete or of another command set than the
/// device's.
const OTHER: &str = "(obsolete or not of this device's command set)";

/// The service action of a CDB whose opcode takes one in byte 1 (bits
/// 4-0).
fn sa5(cdb: &[u8]) -> u8 {
    cdb.get(1).copied().unwrap_or(0) & 0x1f
}

/// The service action of a variable-length (0x7F) CDB.
pub fn variable_sa(cdb: &[u8]) -> u16 {
    cdb.get(8..10)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0)
}

/// ATA PASS-THROUGH(12)/(16): T_LENGTH 0 means no data, else T_DIR says.
fn ata_dir(cdb: &[u8]) -> Direction {
    let b2 = cdb.get(2).copied().unwrap_or(0);
    if b2 & 0x3 == 0 {
        No
    } else if b2 & 0x8 != 0 {
        In
    } else {
        Out
    }
}

/// The command `cdb` is on a device of `class`; `None` for an opcode the
/// table does not know (vendor-specific ones among them).
pub fn lookup(cdb: &[u8], class: DeviceClass) -> Option<Op> {
    let &opc = cdb.first()?;
    let tape = class == Stream;
    let mmc = class == Mmc;
    let changer = class == Changer;
    let disk = !(tape || mmc || changer);
    Some(match opc {
        // SPC, every class.
        0x00 => op("TEST UNIT READY", No, Info),
        0x03 => op("REQUEST SENSE", In, Info),
        0x12 => op("INQUIRY", In, Info),
        0x1a => op("MODE SENSE(6)", In, Info),
        0x5a => op("MODE SENSE(10)", In, Info),
        0x15 => op("MODE SELECT(6)", Out, Settings),
        0x55 => op("MODE SELECT(10)", Out, Settings),
        0x4d => op("LOG SENSE", In, Info),
        0x4c => op("LOG SELECT", Out, Settings),
        0x1c => op("RECEIVE DIAGNOSTIC RESULTS", In, Info),
        0x1d => op("SEND DIAGNOSTIC", Out, Diag),
        0x3c => op("READ BUFFER", In, Info),
        0x3b => by(sa5(cdb).into(), write_buffer(cdb)),
        0x16 => op("RESERVE(6)", No, Reserve),
        0x17 => op("RELEASE(6)", No, Reserve),
        0x56 => op("RESERVE(10)", Out, Reserve),
        0x57 => op("RELEASE(10)", Out, Reserve),
        0x5e => op("PERSISTENT RESERVE IN", In, Reserve),
        0x5f => op("PERSISTENT RESERVE OUT", Out, Reserve),
        0xa0 => op("REPORT LUNS", In, Info),
        0xa2 => op("SECURITY PROTOCOL IN", In, Info),
        0xb5 if changer => op("REQUEST VOLUME ELEMENT ADDRESS", In, Info),
        0xb5 => op("SECURITY PROTOCOL OUT", Out, Security),
        0x8c => op("READ ATTRIBUTE", In, Read),
        0x8d => op("WRITE ATTRIBUTE", Out, Write),
        0x83 => by(sa5(cdb).into(), third_party_copy(cdb)),
        0x84 => op("RECEIVE COPY RESULTS", In, Info),
        0x86 => op("ACCESS CONTROL IN", In, Info),
        0x87 => op("ACCESS CONTROL OUT", Out, Admin),
        0xa3 if mmc => op("SEND KEY", Out, Motion),
        0xa3 => by(sa5(cdb).into(), maintenance_in(cdb)),
        0xa4 if mmc => op("REPORT KEY", In, Info),
        0xa4 => by(sa5(cdb).into(), maintenance_out(cdb)),
        0xab => by(
            sa5(cdb).into(),
            match sa5(cdb) {
                0x01 => op("READ MEDIA SERIAL NUMBER", In, Info),
                _ => op("SERVICE ACTION IN(12)", In, Unlisted),
            },
        ),
        0xa9 => by(sa5(cdb).into(), op("SERVICE ACTION OUT(12)", Out, Unlisted)),
        0x85 => Op {
            name: "ATA PASS-THROUGH(16)",
            dir: Some(ata_dir(cdb)),
            effect: Ata,
            action: None,
        },
        0xa1 if mmc => op("BLANK", No, Format),
        0xa1 => Op {
            name: "ATA PASS-THROUGH(12)",
            dir: Some(ata_dir(cdb)),
            effect: Ata,
            action: None,
        },
        0x7f => by(variable_sa(cdb), variable(cdb)),
        0x1b if changer => op("OPEN/CLOSE IMPORT/EXPORT ELEMENT", No, Motion),
        0x1b if tape => op("LOAD UNLOAD", No, Motion),
        0x1b => op("START STOP UNIT", No, Motion),
        0x1e => op("PREVENT ALLOW MEDIUM REMOVAL", No, Motion),

        // SSC: tapes.
        0x01 if tape => op("REWIND", No, Motion),
        0x05 if tape => op("READ BLOCK LIMITS", In, Info),
        0x08 if tape => op("READ(6)", In, Read),
        0x0a if tape => op("WRITE(6)", Out, Write),
        0x0b if tape => op("SET CAPACITY", No, Format),
        0x0f if tape => op("READ REVERSE(6)", In, Read),
        0x10 if tape => op("WRITE FILEMARKS(6)", No, Write),
        0x11 if tape => op("SPACE(6)", No, Motion),
        0x13 if tape => op("VERIFY(6)", Out, Read),
        0x14 if tape => op("RECOVER BUFFERED DATA", In, Read),
        0x19 if tape => op("ERASE(6)", No, Write),
        0x2b if tape => op("LOCATE(10)", No, Motion),
        0x34 if tape => op("READ POSITION", In, Info),
        0x44 if tape => op("REPORT DENSITY SUPPORT", In, Info),
        0x04 if tape => op("FORMAT MEDIUM", Out, Format),
        0x80 if tape => op("WRITE FILEMARKS(16)", Out, Write),
        0x81 if tape => op("READ REVERSE(16)", In, Read),
        0x82 if tape => op("ALLOW OVERWRITE", Out, Write),
        0x88 if tape => op("READ(16)", In, Read),
        0x8a if tape => op("WRITE(16)", Out, Write),
        0x8f if tape => op("VERIFY(16)", Out, Read),
        0x91 if tape => op("SPACE(16)", No, Motion),
        0x92 if tape => op("LOCATE(16)", No, Motion),
        0x93 if tape => op("ERASE(16)", Out, Write),

        // SMC: medium changers.
        0x07 if changer => op("INITIALIZE ELEMENT STATUS", Out, Motion),
        0x2b if changer => op("POSITION TO ELEMENT", No, Motion),
        0x37 if changer => op("INITIALIZE ELEMENT STATUS WITH RANGE", In, Motion),
        0xa5 if changer => op("MOVE MEDIUM", No, Motion),
        0xa6 if changer => op("EXCHANGE MEDIUM", No, Motion),
        0xb6 if changer => op("SEND VOLUME TAG", Out, Motion),
        0xb8 if changer => op("READ ELEMENT STATUS", In, Info),

        // MMC: CD/DVD/BD drives.
        0x23 if mmc => op("READ FORMAT CAPACITIES", In, Info),
        0x42 if mmc => op("READ SUB-CHANNEL", In, Info),
        0x43 if mmc => op("READ TOC/PMA/ATIP", In, Info),
        0x46 if mmc => op("GET CONFIGURATION", In, Info),
        0x4a if mmc => op("GET EVENT STATUS NOTIFICATION", In, Info),
        0x4b if mmc => op("PAUSE/RESUME", No, Motion),
        0x45 | 0x47 if mmc => op("PLAY AUDIO", No, Motion),
        0x48 if mmc => op("PLAY AUDIO TRACK INDEX", Out, Motion),
        0x4e if mmc => op("STOP PLAY/SCAN", No, Motion),
        0x51 if mmc => op("READ DISC INFORMATION", In, Info),
        0x52 if mmc => op("READ TRACK INFORMATION", In, Info),
        0x53 if mmc => op("RESERVE TRACK", Bi, Write),
        0x54 if mmc => op("SEND OPC INFORMATION", Out, Write),
        0x58 if mmc => op("REPAIR TRACK", No, Write),
        0x5b if mmc => op("CLOSE TRACK/SESSION", No, Write),
        0x5c if mmc => op("READ BUFFER CAPACITY", In, Info),
        0x5d if mmc => op("SEND CUE SHEET", Out, Write),
        0x04 if mmc => op("FORMAT UNIT", Out, Format),
        0xa5 if mmc => op("PLAY AUDIO(12)", No, Motion),
        0xa6 if mmc => op("LOAD/UNLOAD MEDIUM", No, Motion),
        0xa7 if mmc => op("SET READ AHEAD", No, Cache),
        0xac if mmc => op("GET PERFORMANCE", In, Info),
        0xad if mmc => op("READ DISC STRUCTURE", In, Info),
        0xb6 if mmc => op("SET STREAMING", Out, Cache),
        0xb9 if mmc => op("READ CD MSF", In, Read),
        0xba if mmc => op("SCAN", In, Motion),
        0xbb if mmc => op("SET CD SPEED", Out, Motion),
        0xbd if mmc => op("MECHANISM STATUS", In, Info),
        0xbe if mmc => op("READ CD", In, Read),
        0xbf if mmc => op("SEND DISC STRUCTURE", Out, Write),

        // SBC (disks, zoned disks, RBC, optical memory); MMC shares the
        // READ/WRITE/VERIFY family and READ CAPACITY.
        0x04 => op("FORMAT UNIT", Out, Format),
        0x07 => op("REASSIGN BLOCKS", Out, Format),
        0x08 => op("READ(6)", In, Read),
        0x0a => op("WRITE(6)", Out, Write),
        0x25 => op("READ CAPACITY(10)", In, Info),
        0x28 => op("READ(10)", In, Read),
        0x2a => op("WRITE(10)", Out, Write),
        0x2e => op("WRITE AND VERIFY(10)", Out, Write),
        0x2f => op("VERIFY(10)", Out, Read),
        0x34 => op("PRE-FETCH(10)", In, Cache),
        0x35 => op("SYNCHRONIZE CACHE(10)", No, Cache),
        0x37 => op("READ DEFECT DATA(10)", In, Info),
        0x3e => op("READ LONG(10)", In, Read),
        0x3f => op("WRITE LONG(10)", Out, Diag),
        0x41 => op("WRITE SAME(10)", Out, Write),
        0x42 => op("UNMAP", Out, Write),
        0x48 if disk => op("SANITIZE", Out, Format),
        0x88 => op("READ(16)", In, Read),
        0x89 => op("COMPARE AND WRITE", Out, Write),
        0x8a => op("WRITE(16)", Out, Write),
        0x8b => op("ORWRITE(16)", Out, Write),
        0x8e => op("WRITE AND VERIFY(16)", Out, Write),
        0x8f => op("VERIFY(16)", Out, Read),
        0x90 => op("PRE-FETCH(16)", No, Cache),
        0x91 => op("SYNCHRONIZE CACHE(16)", No, Cache),
        0x93 => op("WRITE SAME(16)", Out, Write),
        0x94 => by(sa5(cdb).into(), zbc_out(cdb)),
        0x95 => by(sa5(cdb).into(), zbc_in(cdb)),
        0x9a => op("WRITE STREAM(16)", Out, Write),
        0x9c => op("WRITE ATOMIC(16)", Out, Write),
        0x9e => by(sa5(cdb).into(), service_action_in16(cdb)),
        0x9f => by(
            sa5(cdb).into(),
            match sa5(cdb) {
                0x11 => op("WRITE LONG(16)", Out, Diag),
                0x12 => op("WRITE SCATTERED(16)", Out, Write),
                _ => op("SERVICE ACTION OUT(16)", Out, Unlisted),
            },
        ),
        0xa8 => op("READ(12)", In, Read),
        0xaa => op("WRITE(12)", Out, Write),
        0xac => op("ERASE(12)", No, Write),
        0xae => op("WRITE AND VERIFY(12)", Out, Write),
        0xaf => op("VERIFY(12)", Out, Read),
        0xb7 => op("READ DEFECT DATA(12)", In, Info),
        0x9b => op("READ BUFFER(16)", In, Info),
        0xbd => op("SPARE OUT", Out, Unlisted),

        // Obsolete, or of another command set than the device's: kept for
        // their direction, refused by `standard`.
        0x01 | 0x0b | 0x10 | 0x11 | 0x19 | 0x2b | 0x2c | 0x33 | 0x36 | 0x45 | 0x47 | 0x4b
        | 0x4e | 0x58 | 0x5b | 0x92 | 0xa5 | 0xa6 | 0xa7 | 0xb3 => op(OTHER, No, Unlisted),
        0x05 | 0x0f | 0x14 | 0x23 | 0x29 | 0x2d | 0x43 | 0x44 | 0x46 | 0x4a | 0x52 | 0x5c
        | 0xad | 0xb4 | 0xb8 | 0xb9 | 0xba | 0xbc | 0xbe => op(OTHER, In, Unlisted),
        0x81 if !tape => op("REBUILD(16)", Out, Unlisted),
        0x81 => op(OTHER, In, Unlisted),
        0x13 | 0x18 | 0x24 | 0x30 | 0x31 | 0x32 | 0x38 | 0x39 | 0x3a | 0x3d | 0x40 | 0x48
        | 0x50 | 0x51 | 0x54 | 0x5d | 0x80 | 0x82 | 0xb0 | 0xb1 | 0xb2 | 0xb6 | 0xbb | 0xbf => {
            op(OTHER, Out, Unlisted)
        }
        0x53 | 0x9d => op(OTHER, Bi, Unlisted),
        _ => return None,
    })
}

/// WRITE BUFFER by its MODE field (SPC-6 6.51).
fn write_buffer(cdb: &[u8]) -> Op {
    let (name, effect) = match cdb.get(1).copied().unwrap_or(0) & 0x1f {
        0x04..=0x07 | 0x0d..=0x0f => ("WRITE BUFFER (download microcode)", Firmware),
        0x00 | 0x02 | 0x0a | 0x0b | 0x1c => ("WRITE BUFFER", Diag),
        0x01 => ("WRITE BUFFER (vendor specific)", Vendor),
        _ => ("WRITE BUFFER", Unlisted),
    };
    op(name, Out, effect)
}

/// Third-party copy OUT (0x83) by service action (SPC-6 6.3).
fn third_party_copy(cdb: &[u8]) -> Op {
    match sa5(cdb) {
        0x00 | 0x01 => op("EXTENDED COPY", Out, Copy),
        0x10 => op("POPULATE TOKEN", Out, Copy),
        0x11 => op("WRITE USING TOKEN", Out, Copy),
        0x1c => op("COPY OPERATION ABORT", Out, Copy),
        _ => op("THIRD-PARTY COPY OUT", Out, Unlisted),
    }
}

/// MAINTENANCE IN (0xA3, not MMC) by service action: reports only.
fn maintenance_in(cdb: &[u8]) -> Op {
    let name = match sa5(cdb) {
        0x05 => "REPORT IDENTIFYING INFORMATION",
        0x0a => "REPORT TARGET PORT GROUPS",
        0x0b => "REPORT ALIASES",
        0x0c => "REPORT SUPPORTED OPERATION CODES",
        0x0d => "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
        0x0e => "REPORT PRIORITY",
        0x0f => "REPORT TIMESTAMP",
        0x10 => "MANAGEMENT PROTOCOL IN",
        _ => return op("MAINTENANCE IN", In, Unlisted),
    };
    op(name, In, Info)
}

/// MAINTENANCE OUT (0xA4, not MMC) by service action: every one sets
/// something of the logical unit or its ports.
fn maintenance_out(cdb: &[u8]) -> Op {
    let name = match sa5(cdb) {
        0x06 => "SET IDENTIFYING INFORMATION",
        0x0a => "SET TARGET PORT GROUPS",
        0x0b => "CHANGE ALIASES",
        0x0c => "REMOVE I_T NEXUS",
        0x0e => "SET PRIORITY",
        0x0f => "SET TIMESTAMP",
        0x10 => "MANAGEMENT PROTOCOL OUT",
        _ => return op("MAINTENANCE OUT", Out, Unlisted),
    };
    op(name, Out, Admin)
}

/// ZBC OUT (0x94) by service action (ZBC-2 5.x).
fn zbc_out(cdb: &[u8]) -> Op {
    let name = match sa5(cdb) {
        0x01 => "CLOSE ZONE",
        0x02 => "FINISH ZONE",
        0x03 => "OPEN ZONE",
        0x04 => "RESET WRITE POINTER",
        0x10 => "SEQUENTIALIZE ZONE",
        _ => return op("ZBC OUT", No, Unlisted),
    };
    op(name, No, Zone)
}

/// ZBC IN (0x95) by service action.
fn zbc_in(cdb: &[u8]) -> Op {
    match sa5(cdb) {
        0x00 => op("REPORT ZONES", In, Info),
        0x06 => op("REPORT REALMS", In, Info),
        0x07 => op("REPORT ZONE DOMAINS", In, Info),
        0x08 => op("ZONE ACTIVATE", In, Zone),
        0x09 => op("ZONE QUERY", In, Info),
        _ => op("ZBC IN", In, Unlisted),
    }
}

/// SERVICE ACTION IN(16) (0x9E) by service action (SBC-5).
fn service_action_in16(cdb: &[u8]) -> Op {
    match sa5(cdb) {
        0x10 => op("READ CAPACITY(16)", In, Info),
        0x11 => op("READ LONG(16)", In, Read),
        0x12 => op("GET LBA STATUS", In, Info),
        0x13 => op("REPORT REFERRALS", In, Info),
        0x14 => op("STREAM CONTROL", In, Cache),
        0x15 => op("BACKGROUND CONTROL", In, Diag),
        0x16 => op("GET STREAM STATUS", In, Info),
        0x17 => op("GET PHYSICAL ELEMENT STATUS", In, Info),
        0x18 => op("REMOVE ELEMENT AND TRUNCATE", In, Format),
        0x19 => op("RESTORE ELEMENTS AND REBUILD", In, Format),
        _ => op("SERVICE ACTION IN(16)", In, Unlisted),
    }
}

/// Variable-length CDBs (0x7F) by service action (SBC-5, SAT-5).
fn variable(cdb: &[u8]) -> Op {
    let (name, dir, effect) = match variable_sa(cdb) {
        0x0009 => ("READ(32)", In, Read),
        0x000a => ("VERIFY(32)", Out, Read),
        0x000b => ("WRITE(32)", Out, Write),
        0x000c => ("WRITE AND VERIFY(32)", Out, Write),
        0x000d => ("WRITE SAME(32)", Out, Write),
        0x000e => ("ORWRITE(32)", Out, Write),
        0x0003 => ("XDREAD(32)", In, Unlisted),
        0x0004 => ("XDWRITE(32)", Out, Unlisted),
        0x0006 => ("XPWRITE(32)", Out, Unlisted),
        0x0007 => ("XDWRITEREAD(32)", Bi, Unlisted),
        // ATA PASS-THROUGH(32) (SAT-4): T_DIR and T_LENGTH in byte 11,
        // where the 12- and 16-byte forms have them in byte 2.
        0x1ff0 => {
            let b = cdb.get(11).copied().unwrap_or(0);
            return Op {
                name: "ATA PASS-THROUGH(32)",
                dir: Some(ata_dir(&[0, 0, b])),
                effect: Ata,
                action: None,
            };
        }
        _ => {
            return Op {
                name: "VARIABLE LENGTH",
                dir: None,
                effect: Unlisted,
                action: None,
            }
        }
    };
    op(name, dir, effect)
}
