//! A typed view of the CDBs tcmu-sg splits: READ/WRITE 6/10/12/16, WRITE AND
//! VERIFY 10/12/16 and VERIFY 10/12/16 with BYTCHK=01b. Every other command
//! is passed through verbatim.
//!
//! Per chunk the original CDB is copied and only the LBA and transfer length
//! are patched: byte 1 (DPO, FUA, BYTCHK, ...), the group number and the
//! control byte stay. A chunk CDB is never shorter than the original and is
//! enlarged (6 -> 10 -> 16, 12 -> 16) when its LBA or count does not fit.

/// Opcodes of the commands that may be split.
pub mod op {
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const WRITE_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
}

/// Which family a splittable command belongs to; chunks keep the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RwKind {
    Read,
    Write,
    WriteVerify,
    Verify,
}

/// A block command whose LBA and count tcmu-sg knows how to patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RwCdb {
    pub kind: RwKind,
    /// Length of the original CDB: 6, 10, 12 or 16.
    pub size: usize,
    pub lba: u64,
    /// Blocks to transfer (a READ/WRITE(6) count of 0 is 256).
    pub blocks: u32,
    /// RDPROTECT/WRPROTECT/VRPROTECT (byte 1, bits 7..5); 0 for 6-byte CDBs.
    pub protect: u8,
}

/// Why a CDB cannot be chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    #[error("CDB of {have} bytes is shorter than opcode {opcode:#04x} needs ({need})")]
    TooShort {
        opcode: u8,
        have: usize,
        need: usize,
    },
    #[error("LBA {lba:#x} + {blocks} blocks overflows")]
    Overflow { lba: u64, blocks: u64 },
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |a, b| (a << 8) | *b as u64)
}

fn put_be(dst: &mut [u8], v: u64) {
    let n = dst.len();
    for (i, b) in dst.iter_mut().enumerate() {
        *b = (v >> (8 * (n - 1 - i))) as u8;
    }
}

/// Nominal CDB size of an opcode by its group code (SPC-4 4.2.5.1).
pub fn group_size(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Byte offsets of the fields of a 10/12/16-byte block CDB.
struct Fields {
    lba: std::ops::Range<usize>,
    count: std::ops::Range<usize>,
    group: usize,
    control: usize,
}

fn fields(size: usize) -> Fields {
    match size {
        10 => Fields {
            lba: 2..6,
            count: 7..9,
            group: 6,
            control: 9,
        },
        12 => Fields {
            lba: 2..6,
            count: 6..10,
            group: 10,
            control: 11,
        },
        16 => Fields {
            lba: 2..10,
            count: 10..14,
            group: 14,
            control: 15,
        },
        _ => unreachable!("only 10/12/16-byte layouts are described"),
    }
}

impl RwCdb {
    /// Parses a CDB if it is one tcmu-sg may split. VERIFY is splittable
    /// only with BYTCHK=01b (the data-out buffer is compared block by block).
    pub fn parse(cdb: &[u8]) -> Result<Option<RwCdb>, CdbError> {
        use op::*;
        let Some(&opcode) = cdb.first() else {
            return Ok(None);
        };
        let kind = match opcode {
            READ_6 | READ_10 | READ_12 | READ_16 => RwKind::Read,
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 => RwKind::Write,
            WRITE_VERIFY_10 | WRITE_VERIFY_12 | WRITE_VERIFY_16 => RwKind::WriteVerify,
            VERIFY_10 | VERIFY_12 | VERIFY_16 => RwKind::Verify,
            _ => return Ok(None),
        };
        let size = group_size(opcode).expect("split opcodes have group sizes");
        if cdb.len() < size {
            return Err(CdbError::TooShort {
                opcode,
                have: cdb.len(),
                need: size,
            });
        }
        if kind == RwKind::Verify && (cdb[1] >> 1) & 0x3 != 0b01 {
            return Ok(None);
        }
        let (lba, blocks, protect) = if size == 6 {
            let lba = be(&cdb[1..4]) & 0x1f_ffff;
            let blocks = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
            (lba, blocks, 0)
        } else {
            let f = fields(size);
            (be(&cdb[f.lba]), be(&cdb[f.count]) as u32, cdb[1] >> 5)
        };
        if lba.checked_add(blocks as u64).is_none() {
            return Err(CdbError::Overflow {
                lba,
                blocks: blocks as u64,
            });
        }
        Ok(Some(RwCdb {
            kind,
            size,
            lba,
            blocks,
            protect,
        }))
    }

    /// Builds the CDB of one chunk from the original: a copy with the LBA
    /// and count patched, enlarged if they do not fit. `out` is cleared and
    /// filled; returns nothing, the length is `out.len()`.
    pub fn chunk_cdb(&self, original: &[u8], lba: u64, blocks: u32, out: &mut Vec<u8>) {
        debug_assert!(blocks > 0);
        let mut size = self.size;
        if size == 6 && (lba > 0x1f_ffff || blocks > 256) {
            size = 10;
        }
        if (size == 10 && (lba > u32::MAX as u64 || blocks > u16::MAX as u32))
            || (size == 12 && lba > u32::MAX as u64)
        {
            size = 16;
        }
        out.clear();
        if size == self.size {
            out.extend_from_slice(&original[..size]);
        } else {
            out.resize(size, 0);
            out[0] = opcode_for(self.kind, size);
            let nf = fields(size);
            if self.size == 6 {
                // Byte 1 of a 6-byte CDB holds LBA bits, not flags.
                out[nf.control] = original[5];
            } else {
                let of = fields(self.size);
                out[1] = original[1];
                out[nf.group] = original[of.group];
                out[nf.control] = original[of.control];
            }
        }
        if size == 6 {
            out[1] = (original[1] & 0xe0) | ((lba >> 16) as u8 & 0x1f);
            out[2] = (lba >> 8) as u8;
            out[3] = lba as u8;
            out[4] = if blocks == 256 { 0 } else { blocks as u8 };
        } else {
            let f = fields(size);
            put_be(&mut out[f.lba], lba);
            put_be(&mut out[f.count], blocks as u64);
        }
    }
}

/// The opcode of the same command family at another CDB size.
fn opcode_for(kind: RwKind, size: usize) -> u8 {
    use op::*;
    match (kind, size) {
        (RwKind::Read, 10) => READ_10,
        (RwKind::Read, 16) => READ_16,
        (RwKind::Write, 10) => WRITE_10,
        (RwKind::Write, 16) => WRITE_16,
        (RwKind::WriteVerify, 16) => WRITE_VERIFY_16,
        (RwKind::Verify, 16) => VERIFY_16,
        (k, s) => unreachable!("{k:?} is never enlarged to {s} bytes"),
    }
}

/// One chunk of a split command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub lba: u64,
    pub blocks: u32,
    /// Byte offset of the chunk's data within the command's buffer.
    pub byte_off: u64,
    pub bytes: u64,
}

/// Splits `rw` into chunks of at most `max_bytes` (rounded down to whole
/// blocks of `block_size`, at least one block).
pub fn plan(rw: &RwCdb, block_size: u32, max_bytes: u64) -> impl Iterator<Item = Chunk> {
    let bs = block_size as u64;
    let per = (max_bytes / bs).clamp(1, u32::MAX as u64) as u32;
    let (start, total) = (rw.lba, rw.blocks);
    let mut done = 0u32;
    std::iter::from_fn(move || {
        if done >= total {
            return None;
        }
        let n = per.min(total - done);
        let c = Chunk {
            lba: start + done as u64,
            blocks: n,
            byte_off: done as u64 * bs,
            bytes: n as u64 * bs,
        };
        done += n;
        Some(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(cdb: &[u8], lba: u64, blocks: u32) -> Vec<u8> {
        let rw = RwCdb::parse(cdb).unwrap().unwrap();
        let mut out = Vec::new();
        rw.chunk_cdb(cdb, lba, blocks, &mut out);
        out
    }

    #[test]
    fn parses_lba_and_count_of_each_size() {
        let r6 = RwCdb::parse(&[0x08, 0x1f, 0xff, 0xff, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((r6.lba, r6.blocks, r6.size), (0x1f_ffff, 256, 6));
        let r10 = RwCdb::parse(&[0x2a, 0x08, 1, 2, 3, 4, 0x3f, 0, 9, 0])
            .unwrap()
            .unwrap();
        assert_eq!(
            (r10.kind, r10.lba, r10.blocks),
            (RwKind::Write, 0x01020304, 9)
        );
        let mut c12 = [0u8; 12];
        c12[0] = 0xa8;
        c12[1] = 0x60;
        c12[2..6].copy_from_slice(&[0, 0, 1, 0]);
        c12[6..10].copy_from_slice(&[0, 1, 0, 0]);
        let r12 = RwCdb::parse(&c12).unwrap().unwrap();
        assert_eq!((r12.lba, r12.blocks, r12.protect), (256, 65536, 3));
        let mut c16 = [0u8; 16];
        c16[0] = 0x88;
        c16[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        c16[10..14].copy_from_slice(&8u32.to_be_bytes());
        let r16 = RwCdb::parse(&c16).unwrap().unwrap();
        assert_eq!((r16.lba, r16.blocks), (0x1_0000_0000, 8));
    }

    #[test]
    fn verify_splits_only_with_bytchk_01() {
        let mut v = [0x2f, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        assert!(RwCdb::parse(&v).unwrap().is_none(), "BYTCHK=00: no data");
        v[1] = 0b010;
        assert_eq!(RwCdb::parse(&v).unwrap().unwrap().kind, RwKind::Verify);
        v[1] = 0b110;
        assert!(RwCdb::parse(&v).unwrap().is_none(), "BYTCHK=11: one block");
        // WRITE AND VERIFY always carries data.
        let wv = [0x2e, 0, 0, 0, 0, 0, 0, 0, 8, 0];
        assert_eq!(
            RwCdb::parse(&wv).unwrap().unwrap().kind,
            RwKind::WriteVerify
        );
    }

    #[test]
    fn other_commands_are_not_split() {
        for cdb in [
            &[0x12u8, 0, 0, 0, 36, 0][..],                               // INQUIRY
            &[0x5e, 0, 0, 0, 0, 0, 0, 0, 8, 0][..],                      // PR IN
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0][..],                     // UNMAP
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],                      // SYNC CACHE
            &[0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0][..],    // COMPARE AND WRITE
            &[0x85, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xec, 0][..], // ATA PT
            &[0xc1, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],                      // vendor
        ] {
            assert!(RwCdb::parse(cdb).unwrap().is_none(), "{cdb:02x?}");
        }
    }

    #[test]
    fn short_cdb_is_an_error() {
        assert!(RwCdb::parse(&[0x28, 0, 0]).is_err());
    }

    #[test]
    fn chunk_keeps_byte1_group_and_control() {
        // WRITE(10) with FUA, group 0x15, control 0x80.
        let cdb = [0x2a, 0x08, 0, 0, 0, 0x10, 0x15, 0, 128, 0x80];
        assert_eq!(
            chunk(&cdb, 0x20, 16),
            vec![0x2a, 0x08, 0, 0, 0, 0x20, 0x15, 0, 16, 0x80]
        );
        // READ(12): the group is in byte 10 (QEMU reads the wrong byte).
        let mut c12 = [0u8; 12];
        c12[0] = 0xa8;
        c12[1] = 0x10;
        c12[9] = 64;
        c12[10] = 0x07;
        c12[11] = 0x44;
        let out = chunk(&c12, 8, 8);
        assert_eq!(out[..2], [0xa8, 0x10]);
        assert_eq!(out[2..6], [0, 0, 0, 8]);
        assert_eq!(out[6..10], [0, 0, 0, 8]);
        assert_eq!((out[10], out[11]), (0x07, 0x44));
        // READ(16): group in byte 14.
        let mut c16 = [0u8; 16];
        c16[0] = 0x88;
        c16[1] = 0x08;
        c16[13] = 100;
        c16[14] = 0x3f;
        c16[15] = 0x04;
        let out = chunk(&c16, 0x0012_3456_789a, 7);
        assert_eq!(out[2..10], 0x0012_3456_789a_u64.to_be_bytes());
        assert_eq!(out[10..14], 7u32.to_be_bytes());
        assert_eq!((out[1], out[14], out[15]), (0x08, 0x3f, 0x04));
    }

    #[test]
    fn six_byte_chunks_keep_the_lun_bits_and_encode_256_as_0() {
        let cdb = [0x0a, 0x20, 0, 0, 0, 0x01];
        assert_eq!(
            chunk(&cdb, 0x1_0203, 256),
            vec![0x0a, 0x21, 0x02, 0x03, 0, 0x01]
        );
        assert_eq!(chunk(&cdb, 5, 3), vec![0x0a, 0x20, 0, 5, 3, 0x01]);
    }

    #[test]
    fn cdbs_grow_when_fields_do_not_fit() {
        // READ(6) at an LBA beyond 21 bits becomes READ(10), control kept.
        let out = chunk(&[0x08, 0, 0, 0, 0, 0x01], 0x20_0000, 8);
        assert_eq!(out, vec![0x28, 0, 0, 0x20, 0, 0, 0, 0, 8, 0x01]);
        // WRITE(10) beyond 32-bit LBAs becomes WRITE(16), byte 1 and group kept.
        let out = chunk(&[0x2a, 0x18, 0, 0, 0, 0, 0x05, 0, 8, 0], 0x1_0000_0000, 8);
        assert_eq!(out.len(), 16);
        assert_eq!((out[0], out[1], out[14], out[15]), (0x8a, 0x18, 0x05, 0));
        assert_eq!(out[2..10], 0x1_0000_0000u64.to_be_bytes());
        // WRITE AND VERIFY(12) grows to 16.
        let mut c12 = [0u8; 12];
        c12[0] = 0xae;
        c12[1] = 0x02;
        c12[9] = 1;
        c12[10] = 0x11;
        let out = chunk(&c12, 0x2_0000_0000, 1);
        assert_eq!((out[0], out[1], out[14]), (0x8e, 0x02, 0x11));
        // Never shrinks: a READ(16) at LBA 0 stays 16 bytes.
        let mut c16 = [0u8; 16];
        c16[0] = 0x88;
        c16[13] = 16;
        assert_eq!(chunk(&c16, 0, 8).len(), 16);
    }

    #[test]
    fn plan_table() {
        let rw = RwCdb {
            kind: RwKind::Write,
            size: 10,
            lba: 100,
            blocks: 10,
            protect: 0,
        };
        let p: Vec<_> = plan(&rw, 512, 2048).collect();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].lba, p[0].blocks, p[0].byte_off, p[0].bytes),
            (100, 4, 0, 2048)
        );
        assert_eq!((p[2].lba, p[2].blocks, p[2].byte_off), (108, 2, 4096));
        // 4096-byte blocks with a limit that is not a multiple of them.
        let p: Vec<_> = plan(&rw, 4096, 10_000).collect();
        assert!(p.iter().all(|c| c.bytes % 4096 == 0 && c.bytes <= 10_000));
        // A limit below one block still makes progress.
        assert_eq!(plan(&rw, 4096, 100).count(), 10);
    }
}
