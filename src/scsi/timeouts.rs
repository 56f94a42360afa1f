//! How long one command may take at the backing device: its SG_IO
//! timeout, by device class and opcode.
//!
//! A disk answers in milliseconds, and 20 s says it is not answering. A
//! tape drive's REWIND, LOCATE or SPACE takes minutes and a long ERASE
//! hours; a changer's MOVE MEDIUM or inventory minutes. So:
//!
//! | class | long operations | READ/WRITE | everything else |
//! |---|---|---|---|
//! | disk (SBC, ZBC, ...) | 20 s | 20 s | 20 s |
//! | tape (SSC) | 14400 s | 900 s | 500 s |
//! | changer (SMC) | 3600 s | - | 500 s |
//! | MMC | 3600 s | 500 s | 500 s |
//!
//! (the st driver gives a tape 900 s and 14000 s, LIO's pscsi every
//! non-disk command 500 s). A tape, changer or MMC drive that reports its
//! own timeouts (REPORT SUPPORTED OPERATION CODES with RCTD) is taken at
//! its word for the opcodes it reports. The config string's `timeout_s`
//! sets every command's, `long_timeout_s` the long operations'.

use std::time::Duration;

use super::direction::DeviceClass;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The built-in defaults (see the module's table).
pub const DISK: Duration = Duration::from_secs(20);
pub const LONG_TAPE: Duration = Duration::from_secs(14400);
pub const LONG_OTHER: Duration = Duration::from_secs(3600);
pub const RW_TAPE: Duration = Duration::from_secs(900);
pub const NON_DISK: Duration = Duration::from_secs(500);

/// Opcodes that can take minutes to hours on a class.
fn is_long(class: DeviceClass, opcode: u8) -> bool {
    match class {
        // REWIND, FORMAT MEDIUM, WRITE FILEMARKS(6), SPACE(6), ERASE(6),
        // LOAD UNLOAD, LOCATE(10), WRITE FILEMARKS(16), SPACE(16),
        // LOCATE(16), ERASE(16).
        DeviceClass::Stream => matches!(
            opcode,
            0x01 | 0x04 | 0x10 | 0x11 | 0x19 | 0x1b | 0x2b | 0x80 | 0x91 | 0x92 | 0x93
        ),
        // INITIALIZE ELEMENT STATUS (and WITH RANGE), MOVE MEDIUM,
        // EXCHANGE MEDIUM, READ ELEMENT STATUS, POSITION TO ELEMENT.
        DeviceClass::Changer => matches!(opcode, 0x07 | 0x37 | 0xa5 | 0xa6 | 0xb8 | 0x2b),
        // FORMAT UNIT, START STOP (load/eject), CLOSE TRACK/SESSION,
        // BLANK, SYNCHRONIZE CACHE.
        DeviceClass::Mmc => matches!(opcode, 0x04 | 0x1b | 0x5b | 0xa1 | 0x35),
        DeviceClass::Block => false,
    }
}

/// A tape's READ, WRITE and VERIFY (6/16).
fn is_tape_rw(opcode: u8) -> bool {
    matches!(opcode, 0x08 | 0x0a | 0x13 | 0x88 | 0x8a | 0x8f)
}

/// The timeouts a device reported for its commands (REPORT SUPPORTED
/// OPERATION CODES with RCTD): by opcode, the longest over its service
/// actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reported {
    by_opcode: Vec<(u8, Duration)>,
}

impl Reported {
    /// Parses the "all commands" response (reporting options 000b) with
    /// command timeouts descriptors; descriptors without one, or with 0 in
    /// both fields, are left out. A response that is cut short yields what
    /// it holds.
    pub fn parse(data: &[u8]) -> Reported {
        let mut by_opcode: Vec<(u8, Duration)> = Vec::new();
        let Some(len) = data.get(0..4) else {
            return Reported::default();
        };
        let end =
            (4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize).min(data.len());
        let mut at = 4;
        while at + 8 <= end {
            let d = &data[at..at + 8];
            let ctdp = d[5] & 0x02 != 0;
            at += 8;
            if !ctdp {
                continue;
            }
            // Command timeouts descriptor: length (0x0a), reserved,
            // command specific, nominal and recommended timeouts (s).
            let Some(t) = data.get(at..at + 12) else {
                break;
            };
            at += 12;
            let nominal = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            let recommended = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            let secs = if recommended != 0 {
                recommended
            } else {
                nominal
            };
            if secs == 0 {
                continue;
            }
            let secs = S(secs as u64);
            match by_opcode.iter_mut().find(|(o, _)| *o == d[0]) {
                Some((_, t)) => *t = (*t).max(secs),
                None => by_opcode.push((d[0], secs)),
            }
        }
        Reported { by_opcode }
    }

    pub fn is_empty(&self) -> bool {
        self.by_opcode.is_empty()
    }

    fn get(&self, opcode: u8) -> Option<Duration> {
        self.by_opcode
            .iter()
            .find(|(o, _)| *o == opcode)
            .map(|(_, t)| *t)
    }

    fn longest(&self) -> Option<Duration> {
        self.by_opcode.iter().map(|(_, t)| *t).max()
    }
}

/// The SG_IO timeouts of one backing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub class: DeviceClass,
    /// `timeout_s`: every command.
    pub all: Option<Duration>,
    /// `long_timeout_s`: the class's long operations.
    pub long: Option<Duration>,
    /// What the device reported (tapes, changers and MMC drives only).
    pub reported: Reported,
}

impl Timeouts {
    pub fn new(class: DeviceClass, all: Option<Duration>, long: Option<Duration>) -> Timeouts {
        Timeouts {
            class,
            all,
            long,
            reported: Reported::default(),
        }
    }

    /// Whether the device's own timeouts are worth asking for.
    pub fn asks_the_device(&self) -> bool {
        self.class != DeviceClass::Block && self.all.is_none()
    }

    /// The SG_IO timeout of a command with this opcode.
    pub fn for_opcode(&self, opcode: u8) -> Duration {
        if let Some(t) = self.all {
            return t;
        }
        let long = is_long(self.class, opcode);
        if let (true, Some(t)) = (long, self.long) {
            return t;
        }
        if let Some(t) = self.reported.get(opcode) {
            return t;
        }
        match self.class {
            DeviceClass::Block => DISK,
            DeviceClass::Stream if long => LONG_TAPE,
            DeviceClass::Stream if is_tape_rw(opcode) => RW_TAPE,
            _ if long => LONG_OTHER,
            _ => NON_DISK,
        }
    }

    /// The longest any command may take (what LIO's `cmd_time_out` must
    /// leave room for).
    pub fn longest(&self) -> Duration {
        if let Some(t) = self.all {
            return t;
        }
        let table = match self.class {
            DeviceClass::Block => DISK,
            DeviceClass::Stream => self.long.unwrap_or(LONG_TAPE),
            _ => self.long.unwrap_or(LONG_OTHER),
        };
        self.reported.longest().map_or(table, |r| r.max(table))
    }

    /// For logs: "20 s", or "500 s, READ/WRITE 900 s, long operations
    /// 14400 s (the drive's own for 12 opcodes)".
    pub fn describe(&self) -> String {
        let s = |d: Duration| format!("{} s", d.as_secs());
        let mut t = if self.all.is_some() || self.class == DeviceClass::Block {
            s(self.longest())
        } else {
            let long = self.long.unwrap_or(if self.class == DeviceClass::Stream {
                LONG_TAPE
            } else {
                LONG_OTHER
            });
            let rw = if self.class == DeviceClass::Stream {
                format!(", READ/WRITE {}", s(RW_TAPE))
            } else {
                String::new()
            };
            format!("{}{rw}, long operations {}", s(NON_DISK), s(long))
        };
        if !self.reported.is_empty() && self.all.is_none() {
            t += &format!(
                " (the device's own for {} opcodes)",
                self.reported.by_opcode.len()
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_have_their_defaults() {
        let disk = Timeouts::new(DeviceClass::Block, None, None);
        assert_eq!(disk.for_opcode(0x01), DISK);
        assert_eq!(disk.longest(), DISK);
        let tape = Timeouts::new(DeviceClass::Stream, None, None);
        assert_eq!(tape.for_opcode(0x01), LONG_TAPE); // REWIND
        assert_eq!(tape.for_opcode(0x2b), LONG_TAPE); // LOCATE(10)
        assert_eq!(tape.for_opcode(0x08), RW_TAPE); // READ(6)
        assert_eq!(tape.for_opcode(0x00), NON_DISK); // TEST UNIT READY
        assert_eq!(tape.longest(), LONG_TAPE);
        let changer = Timeouts::new(DeviceClass::Changer, None, None);
        assert_eq!(changer.for_opcode(0xa5), LONG_OTHER); // MOVE MEDIUM
        assert_eq!(changer.for_opcode(0x12), NON_DISK);
        let mmc = Timeouts::new(DeviceClass::Mmc, None, None);
        assert_eq!(mmc.for_opcode(0xa1), LONG_OTHER); // BLANK
        assert_eq!(mmc.for_opcode(0x28), NON_DISK);
    }

    #[test]
    fn the_config_string_overrides() {
        let t = Timeouts::new(DeviceClass::Stream, Some(S(60)), None);
        assert_eq!(t.for_opcode(0x01), S(60));
        assert_eq!(t.longest(), S(60));
        assert!(!t.asks_the_device());
        let t = Timeouts::new(DeviceClass::Stream, None, Some(S(7200)));
        assert_eq!(t.for_opcode(0x19), S(7200));
        assert_eq!(t.for_opcode(0x0a), RW_TAPE);
        assert_eq!(t.longest(), S(7200));
    }

    /// One descriptor of REPORT SUPPORTED OPERATION CODES (all commands),
    /// with a command timeouts descriptor when `t` is given.
    fn desc(op: u8, sa: u16, t: Option<(u32, u32)>) -> Vec<u8> {
        let mut d = vec![op, 0, (sa >> 8) as u8, sa as u8, 0, 0, 0, 6];
        if let Some((nominal, rec)) = t {
            d[5] = 0x02;
            d.extend_from_slice(&[0, 0x0a, 0, 0]);
            d.extend_from_slice(&nominal.to_be_bytes());
            d.extend_from_slice(&rec.to_be_bytes());
        }
        d
    }

    #[test]
    fn the_devices_own_timeouts_are_used() {
        let mut body = Vec::new();
        body.extend(desc(0x01, 0, Some((60, 600)))); // REWIND: 600 recommended
        body.extend(desc(0x19, 0, Some((0, 0)))); // ERASE: none given
        body.extend(desc(0x08, 0, None)); // READ(6): no descriptor
        body.extend(desc(0xa3, 0x0c, Some((30, 0)))); // nominal only
        body.extend(desc(0xa3, 0x05, Some((90, 0)))); // the longest SA wins
        let mut data = (body.len() as u32).to_be_bytes().to_vec();
        data.extend(body);
        let r = Reported::parse(&data);
        assert_eq!(r.get(0x01), Some(S(600)));
        assert_eq!(r.get(0x19), None);
        assert_eq!(r.get(0x08), None);
        assert_eq!(r.get(0xa3), Some(S(90)));
        let mut t = Timeouts::new(DeviceClass::Stream, None, None);
        t.reported = r.clone();
        assert_eq!(t.for_opcode(0x01), S(600));
        assert_eq!(t.for_opcode(0x19), LONG_TAPE);
        assert_eq!(t.for_opcode(0x08), RW_TAPE);
        assert_eq!(t.longest(), LONG_TAPE);
        assert!(t.describe().contains("the device's own for 2 opcodes"));
        // Cut short anywhere: what is whole is kept, nothing panics.
        for n in 0..data.len() {
            let _ = Reported::parse(&data[..n]);
        }
        assert_eq!(Reported::parse(&data[..4 + 20]).get(0x01), Some(S(600)));
    }
}
