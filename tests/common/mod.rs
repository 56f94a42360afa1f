//! Test helpers: a RAM disk that answers SCSI commands through the
//! opaque-context I/O function, reading and writing the mock ring's data
//! area exactly where the iovecs point.

#![allow(dead_code)]

use tcmu_sg::dma::ChunkIo;
use tcmu_sg::error::CmdError;
use tcmu_sg::scsi::cdb::{RwCdb, RwKind};
use tcmu_sg::scsi::sense::{code, fixed_sense, SgResult};
use tcmu_sg::tcmu::mapping::Mapping;

pub struct RamDisk {
    pub block_size: u32,
    pub data: Vec<u8>,
    /// Every CDB received, in order.
    pub cdbs: Vec<Vec<u8>>,
    /// Reads touching this LBA fail with MEDIUM ERROR (INFORMATION = LBA).
    pub bad_lba: Option<u64>,
    /// Reads return this many bytes less than asked.
    pub short_by: u64,
}

impl RamDisk {
    pub fn new(block_size: u32, blocks: u64) -> Self {
        RamDisk {
            block_size,
            data: (0..blocks * block_size as u64)
                .map(|i| (i * 7 % 251) as u8)
                .collect(),
            cdbs: Vec::new(),
            bad_lba: None,
            short_by: 0,
        }
    }

    /// MEDIUM ERROR with nothing transferred, as scsi_debug reports it.
    fn medium_error(lba: u64, len: u64) -> SgResult {
        let mut s = fixed_sense(code::READ_ERROR);
        s[0] = 0xf0;
        s[3..7].copy_from_slice(&(lba as u32).to_be_bytes());
        let mut r = SgResult::check_condition(&s[..18]);
        r.resid = len as i32;
        r
    }

    /// The I/O function: the context is (disk, mapping).
    pub fn io(ctx: &mut (&mut RamDisk, &Mapping), io: &ChunkIo<'_>) -> Result<SgResult, CmdError> {
        Ok(Self::answer(ctx, io))
    }

    fn answer(ctx: &mut (&mut RamDisk, &Mapping), io: &ChunkIo<'_>) -> SgResult {
        let (disk, map) = ctx;
        disk.cdbs.push(io.cdb.to_vec());
        let Ok(Some(rw)) = RwCdb::parse(io.cdb) else {
            if io.cdb[0] == 0x00 {
                return SgResult::good(); // TEST UNIT READY
            }
            if tcmu_sg::scsi::vpd::is_block_limits_inquiry(io.cdb) {
                // Block Limits: no maximum transfer length, optimal 2048.
                let mut page = [0u8; 64];
                page[1] = 0xb0;
                page[3] = 0x3c;
                page[12..16].copy_from_slice(&2048u32.to_be_bytes());
                let n = (io.len as usize).min(page.len());
                map.write_bytes(io.iovs[0].off, &page[..n]).unwrap();
                let mut r = SgResult::good();
                r.resid = (io.len - n as u64) as i32;
                return r;
            }
            if io.cdb[0] == 0x12 {
                let inq = b"\x00\x00\x06\x02\x1f\x00\x00\x00RAMDISK mock            0001";
                let mut left = &inq[..];
                for v in io.iovs {
                    let n = left.len().min(v.len as usize);
                    map.write_bytes(v.off, &left[..n]).unwrap();
                    left = &left[n..];
                }
                let mut r = SgResult::good();
                r.resid = io.len.saturating_sub(inq.len() as u64) as i32;
                return r;
            }
            return SgResult::check_condition(&fixed_sense(code::INVALID_OPCODE)[..18]);
        };
        let bs = disk.block_size as u64;
        let start = (rw.lba * bs) as usize;
        let len = rw.blocks as u64 * bs;
        if start as u64 + len > disk.data.len() as u64 || io.len != len {
            return SgResult::check_condition(&fixed_sense(code::INVALID_FIELD)[..18]);
        }
        if rw.kind == RwKind::Read {
            if let Some(bad) = disk.bad_lba {
                if (rw.lba..rw.lba + rw.blocks as u64).contains(&bad) {
                    return Self::medium_error(bad, len);
                }
            }
        }
        let mut pos = start;
        let moved = len
            - if rw.kind == RwKind::Read {
                disk.short_by.min(len)
            } else {
                0
            };
        let mut left = moved as usize;
        for v in io.iovs {
            let n = left.min(v.len as usize);
            match rw.kind {
                RwKind::Read => map.write_bytes(v.off, &disk.data[pos..pos + n]).unwrap(),
                _ => map.read_bytes(v.off, &mut disk.data[pos..pos + n]).unwrap(),
            }
            pos += n;
            left -= n;
        }
        let mut r = SgResult::good();
        r.resid = (len - moved) as i32;
        r
    }
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}
