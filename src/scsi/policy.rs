//! The command policy: which commands an initiator may send through a
//! tcmu-sg device, judged from the command table (`scsi::opcodes`) before
//! anything reaches the backing device.
//!
//! - `full` passes everything, as pscsi does.
//! - `standard` passes what normal use of the device's class needs (I/O,
//!   identity and state, cache, reservations, zones, tape motion, a
//!   changer's moves, a tape's or an optical drive's MODE SELECT) and
//!   refuses the rest: an opcode it does not allow with INVALID COMMAND
//!   OPERATION CODE (20/00), a service action or mode of an opcode it
//!   otherwise knows with INVALID FIELD IN CDB (24/00).
//! - Grants on top of `standard` (`standard+firmware+format`) allow one
//!   kind of command more each.
//! - `readonly` refuses every command that can change the medium or
//!   settings other hosts share, whatever its data direction, with DATA
//!   PROTECT, WRITE PROTECTED (27/00); reads, identity, cache and
//!   reservations (so that a cluster can still fence) pass.
//!
//! SCST's pass-through keeps to an allow-list per device type for the same
//! reason; the kernel's own SG_IO filter does not apply to a daemon with
//! CAP_SYS_RAWIO, and is keyed on the opcode alone.

use super::direction::DeviceClass;
use super::opcodes::{self, Effect, Op};

/// The base of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// Everything passes (pscsi's behaviour).
    Full,
    /// An allow-list by device class, and grants.
    #[default]
    Standard,
}

/// What a grant allows on top of `standard`, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Firmware,
    Format,
    Security,
    Ata,
    Vendor,
    ModeSelect,
    Diag,
    Admin,
    Copy,
}

impl Grant {
    pub const ALL: [Grant; 9] = [
        Grant::Firmware,
        Grant::Format,
        Grant::Security,
        Grant::Ata,
        Grant::Vendor,
        Grant::ModeSelect,
        Grant::Diag,
        Grant::Admin,
        Grant::Copy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Grant::Firmware => "firmware",
            Grant::Format => "format",
            Grant::Security => "security",
            Grant::Ata => "ata",
            Grant::Vendor => "vendor",
            Grant::ModeSelect => "modeselect",
            Grant::Diag => "diag",
            Grant::Admin => "admin",
            Grant::Copy => "copy",
        }
    }

    /// The grant that allows commands of `effect`, if any does.
    pub fn for_effect(effect: Effect) -> Option<Grant> {
        Some(match effect {
            Effect::Firmware => Grant::Firmware,
            Effect::Format => Grant::Format,
            Effect::Security => Grant::Security,
            Effect::Ata => Grant::Ata,
            Effect::Vendor => Grant::Vendor,
            Effect::Settings => Grant::ModeSelect,
            Effect::Diag => Grant::Diag,
            Effect::Admin => Grant::Admin,
            Effect::Copy => Grant::Copy,
            _ => return None,
        })
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A device's policy: its level, its grants, and whether it is read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    pub level: Level,
    grants: u16,
    pub readonly: bool,
}

impl Policy {
    pub const FULL: Policy = Policy {
        level: Level::Full,
        grants: 0,
        readonly: false,
    };

    /// Parses `full`, `standard` or `standard+GRANT+GRANT...`.
    pub fn parse(s: &str) -> Result<Policy, String> {
        let mut parts = s.split('+');
        let level = match parts.next().unwrap_or_default() {
            "full" => Level::Full,
            "standard" => Level::Standard,
            other => {
                return Err(format!(
                    "unknown policy '{other}' (expected full, standard, or standard+GRANT...)"
                ))
            }
        };
        let mut p = Policy {
            level,
            ..Policy::default()
        };
        for g in parts {
            if level == Level::Full {
                return Err("grants go with standard (full allows everything already)".into());
            }
            let grant = Grant::ALL
                .into_iter()
                .find(|x| x.name() == g)
                .ok_or_else(|| {
                    let names: Vec<_> = Grant::ALL.iter().map(|x| x.name()).collect();
                    format!("unknown grant '{g}' (known: {})", names.join(", "))
                })?;
            p.grants |= grant.bit();
        }
        Ok(p)
    }

    pub fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        Grant::ALL
            .into_iter()
            .filter(|g| self.grants & g.bit() != 0)
    }

    /// `full` without read-only: nothing is judged.
    pub fn passes_everything(&self) -> bool {
        self.level == Level::Full && !self.readonly
    }

    pub fn has(&self, g: Grant) -> bool {
        self.grants & g.bit() != 0
    }

    /// `full`, `standard`, `standard+firmware`, with `, read-only`.
    pub fn describe(&self) -> String {
        let mut s = String::from(match self.level {
            Level::Full => "full",
            Level::Standard => "standard",
        });
        for g in self.grants() {
            s.push('+');
            s.push_str(g.name());
        }
        if self.readonly {
            s.push_str(", read-only");
        }
        s
    }
}

/// The command sets the allow-list tells apart: `DeviceClass` with the
/// devices of no known command set (enclosures, processors, ...) apart,
/// since their `standard` is SPC's alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Disks, zoned disks, RBC, optical memory.
    Disk,
    Tape,
    Changer,
    Mmc,
    Other,
}

impl Family {
    pub fn from_peripheral_type(t: u8) -> Family {
        match t & 0x1f {
            0x00 | 0x04 | 0x07 | 0x0e | 0x14 => Family::Disk,
            0x01 => Family::Tape,
            0x05 => Family::Mmc,
            0x08 => Family::Changer,
            _ => Family::Other,
        }
    }

    /// What `standard` allows on a device of this family.
    fn allows(self, e: Effect) -> bool {
        use Effect::*;
        match self {
            Family::Disk => matches!(e, Read | Write | Info | Cache | Reserve | Motion | Zone),
            // A tape's block size, density and compression are set with
            // MODE SELECT by st and every backup program; an optical
            // drive's write parameters likewise. Neither is shared the
            // way a disk's cache settings are.
            Family::Tape | Family::Mmc => {
                matches!(e, Read | Write | Info | Cache | Reserve | Motion | Settings)
            }
            Family::Changer => matches!(e, Read | Info | Cache | Reserve | Motion),
            Family::Other => matches!(e, Info | Reserve),
        }
    }
}

/// What `readonly` lets through: nothing that changes the medium or
/// settings other hosts share.
fn readonly_allows(e: Effect) -> bool {
    use Effect::*;
    matches!(e, Read | Info | Cache | Reserve | Motion)
}

/// How a refused command is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// INVALID COMMAND OPERATION CODE (20/00).
    Opcode,
    /// INVALID FIELD IN CDB (24/00): a service action or mode refused.
    Field,
    /// DATA PROTECT, WRITE PROTECTED (27/00).
    WriteProtected,
}

/// A command the policy refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub opcode: u8,
    /// The service action or mode that decided, where one did.
    pub action: Option<u16>,
    pub name: &'static str,
    pub answer: Answer,
    /// The grant that would let it through, if one would.
    pub grant: Option<Grant>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "opcode {:#04x}", self.opcode)?;
        if let Some(a) = self.action {
            write!(f, " (service action or mode {a:#x})")?;
        }
        write!(f, " {} refused", self.name)?;
        match (self.answer, self.grant) {
            (Answer::WriteProtected, _) => write!(f, " by read-only"),
            (_, Some(g)) => write!(
                f,
                " by policy standard (allow it with policy=standard+{})",
                g.name()
            ),
            (_, None) => write!(f, " by policy standard (only policy=full passes it)"),
        }
    }
}

impl std::error::Error for Refused {}

/// Judges `cdb` on a device of `class` and `family` under `p`.
pub fn judge(cdb: &[u8], class: DeviceClass, family: Family, p: &Policy) -> Result<(), Refused> {
    judge_entry(cdb, opcodes::lookup(cdb, class), family, p)
}

/// As `judge`, with the command's table entry already looked up (`entry`:
/// `opcodes::lookup` of `cdb` on the device's class).
pub fn judge_entry(
    cdb: &[u8],
    entry: Option<Op>,
    family: Family,
    p: &Policy,
) -> Result<(), Refused> {
    let Some(&opcode) = cdb.first() else {
        return Ok(());
    };
    if p.passes_everything() {
        return Ok(());
    }
    let vendor = opcode >= 0xc0;
    let effect = match entry {
        Some(Op { effect, .. }) => effect,
        None if vendor => Effect::Vendor,
        None => Effect::Unlisted,
    };
    let action = entry.and_then(|o| o.action);
    let refuse = |answer| Refused {
        opcode,
        action,
        name: entry.map_or(
            if vendor {
                "(vendor specific)"
            } else {
                "(unknown)"
            },
            |o| o.name,
        ),
        answer,
        grant: Grant::for_effect(effect),
    };
    if p.level == Level::Standard {
        let granted = Grant::for_effect(effect).is_some_and(|g| p.has(g));
        if !(family.allows(effect) || granted) {
            let answer = if action.is_some() {
                Answer::Field
            } else {
                Answer::Opcode
            };
            return Err(refuse(answer));
        }
    }
    if p.readonly && !readonly_allows(effect) {
        return Err(Refused {
            grant: None,
            ..refuse(Answer::WriteProtected)
        });
    }
    Ok(())
}

/// MODE SENSE(6) or (10): the header's device-specific parameter (byte 2
/// or 3), whose bit 7 is WP on a disk and on a tape.
pub fn mode_sense_wp_byte(cdb: &[u8]) -> Option<usize> {
    match cdb.first()? {
        0x1a => Some(2),
        0x5a => Some(3),
        _ => None,
    }
}

/// Whether the device's MODE SENSE answers get the WP bit: a read-only
/// disk or tape, so that the initiator's kernel sees a read-only device
/// (as QEMU and pscsi report one).
pub fn marks_write_protect(family: Family, p: &Policy) -> bool {
    p.readonly && matches!(family, Family::Disk | Family::Tape)
}

/// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN, service action 0x0C).
pub fn is_report_supported_opcodes(cdb: &[u8], class: DeviceClass) -> bool {
    class != DeviceClass::Mmc && cdb.len() >= 12 && cdb[0] == 0xa3 && cdb[1] & 0x1f == 0x0c
}

/// Whether a command the device reports may pass `p`: with its service
/// action where it names one; an opcode listed without one passes if any
/// of its service actions or modes would.
fn reported_passes(
    opcode: u8,
    sa: Option<u16>,
    class: DeviceClass,
    family: Family,
    p: &Policy,
) -> bool {
    let mut cdb = [0u8; 16];
    cdb[0] = opcode;
    let try_sa = |cdb: &mut [u8; 16], sa: u16| {
        if opcode == 0x7f {
            cdb[8..10].copy_from_slice(&sa.to_be_bytes());
        } else {
            cdb[1] = (sa & 0x1f) as u8;
        }
        judge(&cdb[..], class, family, p).is_ok()
    };
    match sa {
        Some(sa) => try_sa(&mut cdb, sa),
        None if opcodes::lookup(&cdb, class).is_some_and(|o| o.action.is_some()) => {
            (0..0x20).any(|m| try_sa(&mut cdb, m))
        }
        None => judge(&cdb, class, family, p).is_ok(),
    }
}

/// Filters the device's REPORT SUPPORTED OPERATION CODES answer in `data`
/// (the bytes it returned) to what `p` lets through, so that an
/// initiator's tools do not offer what will be refused. The list of all
/// commands (REPORTING OPTIONS 000b) loses the refused descriptors, and
/// its COMMAND DATA LENGTH shrinks by as much (the freed tail is zeroed);
/// the answer for one command says SUPPORT 001b (not supported) and no
/// CDB usage data. Returns whether it changed anything.
pub fn filter_supported_opcodes(
    cdb: &[u8],
    data: &mut [u8],
    class: DeviceClass,
    family: Family,
    p: &Policy,
) -> bool {
    if p.passes_everything() {
        return false;
    }
    let options = cdb[2] & 0x07;
    if options != 0 {
        // One command: REQUESTED OPERATION CODE (byte 3) and SERVICE ACTION
        // (bytes 4-5) when the options name one.
        if data.len() < 4 {
            return false;
        }
        let sa = (options != 1).then(|| u16::from_be_bytes([cdb[4], cdb[5]]));
        if reported_passes(cdb[3], sa, class, family, p) {
            return false;
        }
        data[1] = (data[1] & !0x07) | 0x01;
        data[2..].fill(0);
        return true;
    }
    if data.len() < 4 {
        return false;
    }
    let length = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let end = data.len().min(4 + length);
    let (mut read, mut write, mut removed) = (4, 4, 0);
    while read + 8 <= end {
        let d = &data[read..read + 8];
        let size = if d[5] & 0x02 != 0 { 20 } else { 8 };
        if read + size > end {
            break;
        }
        let sa = (d[5] & 0x01 != 0).then(|| u16::from_be_bytes([d[2], d[3]]));
        if reported_passes(d[0], sa, class, family, p) {
            data.copy_within(read..read + size, write);
            write += size;
        } else {
            removed += size;
        }
        read += size;
    }
    if removed == 0 {
        return false;
    }
    // What did not fit whole stays where it was, moved down.
    data.copy_within(read..end, write);
    let new_end = write + (end - read);
    data[new_end..end].fill(0);
    data[..4].copy_from_slice(&((length - removed) as u32).to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeviceClass::*;

    const CLASSES: [(DeviceClass, Family); 5] = [
        (Block, Family::Disk),
        (Stream, Family::Tape),
        (Mmc, Family::Mmc),
        (Changer, Family::Changer),
        (Block, Family::Other),
    ];

    fn p(s: &str) -> Policy {
        Policy::parse(s).unwrap()
    }

    fn ro(s: &str) -> Policy {
        Policy {
            readonly: true,
            ..p(s)
        }
    }

    /// Every opcode, with the byte-1 values that pick service actions and
    /// modes, and a 0x7F CDB for each variable-length service action.
    fn every_cdb() -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        for op in 0..=255u8 {
            for b1 in 0..0x20u8 {
                let mut c = vec![0u8; 16];
                c[0] = op;
                c[1] = b1;
                v.push(c);
            }
        }
        for sa in [0x3u16, 4, 6, 7, 9, 0xa, 0xb, 0xc, 0xd, 0xe, 0x1ff0, 0x8801] {
            let mut c = vec![0u8; 32];
            c[0] = 0x7f;
            c[7] = 24;
            c[8..10].copy_from_slice(&sa.to_be_bytes());
            v.push(c);
        }
        v
    }

    fn effect(cdb: &[u8], class: DeviceClass) -> Effect {
        match opcodes::lookup(cdb, class) {
            Some(o) => o.effect,
            None if cdb[0] >= 0xc0 => Effect::Vendor,
            None => Effect::Unlisted,
        }
    }

    #[test]
    fn parsing() {
        assert_eq!(p("full"), Policy::FULL);
        assert_eq!(p("standard"), Policy::default());
        let g = p("standard+firmware+format");
        assert!(g.has(Grant::Firmware) && g.has(Grant::Format) && !g.has(Grant::Ata));
        assert_eq!(g.describe(), "standard+firmware+format");
        assert_eq!(ro("standard+ata").describe(), "standard+ata, read-only");
        for bad in [
            "",
            "open",
            "standard+fw",
            "full+firmware",
            "standard+",
            "Standard",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Policy::parse("standard+fw").unwrap_err();
        assert!(
            e.contains("firmware, format, security, ata, vendor, modeselect"),
            "{e}"
        );
    }

    #[test]
    fn full_passes_everything() {
        for cdb in every_cdb() {
            for (class, family) in CLASSES {
                assert_eq!(judge(&cdb, class, family, &Policy::FULL), Ok(()));
            }
        }
    }

    /// What `standard` lets through is only ever normal use; what it
    /// refuses names the grant that would allow it, if one would, and that
    /// grant does.
    #[test]
    fn standard_allows_only_normal_use_and_grants_allow_their_own() {
        let all = p("standard+firmware+format+security+ata+vendor+modeselect+diag+admin+copy");
        for cdb in every_cdb() {
            for (class, family) in CLASSES {
                let e = effect(&cdb, class);
                match judge(&cdb, class, family, &p("standard")) {
                    Ok(()) => {
                        assert!(
                            !matches!(
                                e,
                                Effect::Firmware
                                    | Effect::Format
                                    | Effect::Security
                                    | Effect::Ata
                                    | Effect::Vendor
                                    | Effect::Diag
                                    | Effect::Admin
                                    | Effect::Copy
                                    | Effect::Unlisted
                            ),
                            "{cdb:02x?} {class:?} {e:?} passed standard"
                        );
                        if e == Effect::Settings {
                            assert!(matches!(family, Family::Tape | Family::Mmc));
                        }
                    }
                    Err(r) => {
                        assert_ne!(r.answer, Answer::WriteProtected);
                        assert_eq!(r.grant, Grant::for_effect(e));
                        match r.grant {
                            Some(g) => {
                                let one = p(&format!("standard+{}", g.name()));
                                assert_eq!(judge(&cdb, class, family, &one), Ok(()), "{r}");
                            }
                            None => assert!(judge(&cdb, class, family, &all).is_err()),
                        }
                    }
                }
            }
        }
    }

    /// Read-only refuses everything that is not a read, identity, cache or
    /// reservation, or motion, whatever the policy and data direction.
    #[test]
    fn readonly_refuses_every_change() {
        for cdb in every_cdb() {
            for (class, family) in CLASSES {
                let e = effect(&cdb, class);
                let quiet = matches!(
                    e,
                    Effect::Read | Effect::Info | Effect::Cache | Effect::Reserve | Effect::Motion
                );
                let r = judge(&cdb, class, family, &ro("full"));
                assert_eq!(r.is_ok(), quiet, "{cdb:02x?} {class:?} {e:?}");
                if let Err(r) = r {
                    assert_eq!(r.answer, Answer::WriteProtected);
                }
                // Read-only on top of standard: never more than standard.
                if judge(&cdb, class, family, &ro("standard")).is_ok() {
                    assert!(quiet && judge(&cdb, class, family, &p("standard")).is_ok());
                }
            }
        }
    }

    fn cdb(b: &[u8]) -> Vec<u8> {
        let mut c = b.to_vec();
        c.resize(16, 0);
        c
    }

    fn answer(c: &[u8], class: DeviceClass, family: Family, pol: &Policy) -> Option<Answer> {
        judge(&cdb(c), class, family, pol).err().map(|r| r.answer)
    }

    #[test]
    fn what_the_issue_names() {
        use Answer::*;
        let std = p("standard");
        let disk = |c: &[u8], pol: &Policy| answer(c, Block, Family::Disk, pol);
        // Normal use of a disk passes.
        for c in [
            &[0x28][..],
            &[0x2a],
            &[0x88],
            &[0x8a],
            &[0x12],
            &[0x00],
            &[0x25],
            &[0x9e, 0x10],
            &[0x1a],
            &[0x5a],
            &[0x4d],
            &[0x35],
            &[0x91],
            &[0x42],
            &[0x93],
            &[0x89],
            &[0x5e],
            &[0x5f],
            &[0xa0],
            &[0xa3, 0x0c],
            &[0x95, 0x00],
            &[0x94, 0x04],
            &[0x1b],
            &[0x3c],
        ] {
            assert_eq!(disk(c, &std), None, "{c:02x?}");
        }
        // WRITE BUFFER: download modes need `firmware`, and are refused by
        // field; the echo buffer needs `diag`.
        for mode in [0x04, 0x05, 0x06, 0x07, 0x0d, 0x0e, 0x0f] {
            assert_eq!(disk(&[0x3b, mode], &std), Some(Field));
            assert_eq!(disk(&[0x3b, mode], &p("standard+firmware")), None);
            assert_eq!(disk(&[0x3b, mode], &p("standard+diag")), Some(Field));
        }
        assert_eq!(disk(&[0x3b, 0x0a], &p("standard+diag")), None);
        // FORMAT UNIT, SANITIZE (0x48: PLAY AUDIO TI on MMC, CVE-2012-4542),
        // REASSIGN BLOCKS.
        for c in [&[0x04][..], &[0x48, 0x01], &[0x48, 0x03], &[0x07]] {
            assert_eq!(disk(c, &std), Some(Opcode), "{c:02x?}");
            assert_eq!(disk(c, &p("standard+format")), None);
        }
        assert_eq!(answer(&[0x48], Mmc, Family::Mmc, &std), None);
        // SECURITY PROTOCOL OUT; IN passes.
        assert_eq!(disk(&[0xb5], &std), Some(Opcode));
        assert_eq!(disk(&[0xb5], &p("standard+security")), None);
        assert_eq!(disk(&[0xa2], &std), None);
        // ATA PASS-THROUGH (12), (16) and (32); 0xA1 is BLANK on MMC.
        let mut ata32 = cdb(&[0x7f]);
        ata32.resize(32, 0);
        ata32[8..10].copy_from_slice(&0x1ff0u16.to_be_bytes());
        for c in [&[0x85][..], &[0xa1], &ata32] {
            assert!(disk(c, &std).is_some(), "{c:02x?}");
            assert_eq!(disk(c, &p("standard+ata")), None);
        }
        assert_eq!(answer(&[0xa1], Mmc, Family::Mmc, &std), Some(Opcode));
        assert_eq!(
            answer(&[0xa1], Mmc, Family::Mmc, &p("standard+format")),
            None
        );
        // Vendor opcodes.
        for op in [0xc0, 0xd1, 0xff] {
            assert_eq!(disk(&[op], &std), Some(Opcode));
            assert_eq!(disk(&[op], &p("standard+vendor")), None);
        }
        // MODE SELECT and LOG SELECT on a disk; on a tape MODE SELECT is
        // normal use.
        for c in [&[0x15][..], &[0x55], &[0x4c]] {
            assert_eq!(disk(c, &std), Some(Opcode));
            assert_eq!(disk(c, &p("standard+modeselect")), None);
        }
        assert_eq!(answer(&[0x15], Stream, Family::Tape, &std), None);
        // SEND DIAGNOSTIC, WRITE LONG; MAINTENANCE OUT; EXTENDED COPY.
        assert_eq!(disk(&[0x1d], &std), Some(Opcode));
        assert_eq!(disk(&[0x9f, 0x11], &std), Some(Field));
        assert_eq!(disk(&[0xa4, 0x0f], &std), Some(Field));
        assert_eq!(disk(&[0xa4, 0x0f], &p("standard+admin")), None);
        assert_eq!(disk(&[0x83, 0x00], &p("standard+copy")), None);
        // Unknown service actions: refused by field, even with every grant.
        assert_eq!(disk(&[0x9e, 0x1f], &std), Some(Field));
        // A tape's own commands pass on a tape, not on a disk.
        for c in [
            &[0x01][..],
            &[0x11],
            &[0x10],
            &[0x19],
            &[0x34],
            &[0x05],
            &[0x08],
        ] {
            assert_eq!(answer(c, Stream, Family::Tape, &std), None, "{c:02x?}");
        }
        assert_eq!(disk(&[0x01], &std), Some(Opcode));
        // An enclosure: SPC alone.
        assert_eq!(answer(&[0x12], Block, Family::Other, &std), None);
        assert_eq!(answer(&[0x1c], Block, Family::Other, &std), None);
        assert_eq!(answer(&[0x28], Block, Family::Other, &std), Some(Opcode));
    }

    #[test]
    fn readonly_by_name() {
        use Answer::*;
        let disk = |c: &[u8]| answer(c, Block, Family::Disk, &ro("standard"));
        for c in [
            &[0x0a][..],
            &[0x2a],
            &[0xaa],
            &[0x8a],
            &[0x2e],
            &[0x41],
            &[0x93],
            &[0x42],
            &[0x89],
            &[0x8b],
            &[0x9c],
            &[0x94, 0x04],
            &[0x94, 0x01],
        ] {
            assert_eq!(disk(c), Some(WriteProtected), "{c:02x?}");
        }
        for c in [
            &[0x28][..],
            &[0x88],
            &[0x12],
            &[0x5e],
            &[0x5f],
            &[0x35],
            &[0x95, 0x00],
            &[0x2f],
        ] {
            assert_eq!(disk(c), None, "{c:02x?}");
        }
        // What standard refuses stays refused as standard says.
        assert_eq!(disk(&[0x04]), Some(Opcode));
        // With the grant, FORMAT UNIT, SANITIZE and MODE SELECT are still
        // write protected.
        let all = ro("standard+format+modeselect+firmware");
        for c in [&[0x04][..], &[0x48, 1], &[0x15], &[0x3b, 5]] {
            assert_eq!(
                answer(c, Block, Family::Disk, &all),
                Some(WriteProtected),
                "{c:02x?}"
            );
        }
        // A tape: writes, filemarks and erase refused; motion and reads pass.
        let tape = |c: &[u8]| answer(c, Stream, Family::Tape, &ro("standard"));
        for c in [&[0x0a][..], &[0x10], &[0x19], &[0x15], &[0x04]] {
            assert!(tape(c).is_some(), "{c:02x?}");
        }
        for c in [&[0x08][..], &[0x01], &[0x11], &[0x2b], &[0x34], &[0x1b]] {
            assert_eq!(tape(c), None, "{c:02x?}");
        }
        // UNMAP on a disk, READ SUB-CHANNEL on MMC (the same opcode).
        assert_eq!(answer(&[0x42], Mmc, Family::Mmc, &ro("full")), None);
        assert_eq!(
            answer(&[0x42], Block, Family::Disk, &ro("full")),
            Some(WriteProtected)
        );
        // MODE SENSE's WP bit: disks and tapes, read-only only.
        assert_eq!(mode_sense_wp_byte(&[0x1a]), Some(2));
        assert_eq!(mode_sense_wp_byte(&[0x5a]), Some(3));
        assert!(marks_write_protect(Family::Disk, &ro("full")));
        assert!(marks_write_protect(Family::Tape, &ro("standard")));
        assert!(!marks_write_protect(Family::Mmc, &ro("standard")));
        assert!(!marks_write_protect(Family::Disk, &p("standard")));
    }

    /// A REPORT SUPPORTED OPERATION CODES list: READ(10), WRITE(10), FORMAT
    /// UNIT, WRITE BUFFER (with a timeouts descriptor), READ CAPACITY(16)
    /// (by service action), SANITIZE (by service action).
    fn rsoc_all() -> Vec<u8> {
        let d = |op: u8, sa: Option<u16>, ctdp: bool| {
            let mut v = vec![op, 0, 0, 0, 0, 0, 0, 10];
            if let Some(sa) = sa {
                v[2..4].copy_from_slice(&sa.to_be_bytes());
                v[5] |= 1;
            }
            if ctdp {
                v[5] |= 2;
                v.extend_from_slice(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 60]);
            }
            v
        };
        let mut body = Vec::new();
        for x in [
            d(0x28, None, false),
            d(0x2a, None, false),
            d(0x04, None, false),
            d(0x3b, None, true),
            d(0x9e, Some(0x10), false),
            d(0x48, Some(0x01), false),
        ] {
            body.extend(x);
        }
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend(body);
        v
    }

    fn listed(data: &[u8]) -> Vec<u8> {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let mut ops = Vec::new();
        let mut at = 4;
        while at + 8 <= 4 + len {
            ops.push(data[at]);
            at += if data[at + 5] & 2 != 0 { 20 } else { 8 };
        }
        ops
    }

    #[test]
    fn supported_opcodes_are_filtered_to_the_policy() {
        let rsoc = [0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
        assert!(is_report_supported_opcodes(&rsoc, Block));
        assert!(!is_report_supported_opcodes(&rsoc, Mmc));
        let mut data = rsoc_all();
        assert!(!filter_supported_opcodes(
            &rsoc,
            &mut data,
            Block,
            Family::Disk,
            &Policy::FULL
        ));
        assert_eq!(listed(&data), [0x28, 0x2a, 0x04, 0x3b, 0x9e, 0x48]);
        let before = data.len();
        assert!(filter_supported_opcodes(
            &rsoc,
            &mut data,
            Block,
            Family::Disk,
            &p("standard")
        ));
        assert_eq!(data.len(), before);
        assert_eq!(listed(&data), [0x28, 0x2a, 0x9e]);
        assert!(data[4 + 24..].iter().all(|&b| b == 0));
        let mut data = rsoc_all();
        filter_supported_opcodes(
            &rsoc,
            &mut data,
            Block,
            Family::Disk,
            &p("standard+firmware"),
        );
        assert_eq!(listed(&data), [0x28, 0x2a, 0x3b, 0x9e]);
        let mut data = rsoc_all();
        filter_supported_opcodes(&rsoc, &mut data, Block, Family::Disk, &ro("full"));
        assert_eq!(listed(&data), [0x28, 0x9e]);
        // A list cut short by the allocation length: what is whole is
        // judged, the rest is kept as it came.
        let mut data = rsoc_all()[..4 + 8 + 8 + 4].to_vec();
        assert!(filter_supported_opcodes(
            &rsoc,
            &mut data,
            Block,
            Family::Disk,
            &ro("full")
        ));
        assert_eq!(&data[..4], &(60u32 - 8).to_be_bytes());
        assert_eq!(data[4], 0x28);
        assert_eq!(&data[12..16], &[0x04, 0, 0, 0]);
        // One command asked for: SUPPORT 001b when refused.
        let one = [0xa3, 0x0c, 0x01, 0x04, 0, 0, 0, 0, 0, 0x10, 0, 0];
        let mut data = vec![0, 0x03, 0, 6, 0x04, 0x1f, 0, 0, 0, 0];
        assert!(filter_supported_opcodes(
            &one,
            &mut data,
            Block,
            Family::Disk,
            &p("standard")
        ));
        assert_eq!(data, [0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
        let read = [0xa3, 0x0c, 0x01, 0x28, 0, 0, 0, 0, 0, 0x10, 0, 0];
        let mut data = vec![0, 0x03, 0, 10, 0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(!filter_supported_opcodes(
            &read,
            &mut data,
            Block,
            Family::Disk,
            &p("standard")
        ));
        // By service action: READ CAPACITY(16) passes, an unknown one not.
        let sa = |s: u8| [0xa3, 0x0c, 0x02, 0x9e, 0, s, 0, 0, 0, 0x10, 0, 0];
        let mut data = vec![0, 0x03, 0, 16, 0x9e, 0x10];
        assert!(!filter_supported_opcodes(
            &sa(0x10),
            &mut data,
            Block,
            Family::Disk,
            &p("standard")
        ));
        assert!(filter_supported_opcodes(
            &sa(0x1f),
            &mut data,
            Block,
            Family::Disk,
            &p("standard")
        ));
    }
}
