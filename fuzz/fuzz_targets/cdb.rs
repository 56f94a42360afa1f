//! CDB parsing and chunk planning/patching. Properties: a parsed
//! READ/WRITE/VERIFY CDB's chunk plan covers exactly its LBA and byte range
//! in order, no chunk exceeds the limit, and every patched chunk CDB parses
//! back to the same kind and to its chunk's LBA and count, keeping byte 1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_sg::scsi::cdb::{plan, RwCdb};

fuzz_target!(|data: &[u8]| {
    let Some((&bs_sel, rest)) = data.split_first() else {
        return;
    };
    let Some((max_b, cdb)) = rest.split_at_checked(3) else {
        return;
    };
    let block_size: u32 = [512, 4096, 520, 1][bs_sel as usize % 4];
    let max_bytes = u32::from_le_bytes([max_b[0], max_b[1], max_b[2], 0]) as u64;
    let cdb = &cdb[..cdb.len().min(32)];
    let Ok(Some(rw)) = RwCdb::parse(cdb) else {
        return;
    };
    let per = (max_bytes / block_size as u64).max(1);
    // A command's data lies in the 1 GiB data area, so real plans stay
    // below about 2M chunks; walk those of up to 4096 (the arithmetic is
    // the same for longer ones).
    let expected = (rw.blocks as u64).div_ceil(per);
    if expected > 4096 {
        return;
    }
    let mut next_lba = rw.lba;
    let mut next_off = 0u64;
    let mut total = 0u64;
    let mut out = Vec::new();
    for (i, c) in plan(&rw, block_size, max_bytes).enumerate() {
        assert!((i as u64) < expected, "more chunks than blocks / limit");
        assert_eq!(c.lba, next_lba, "chunks are contiguous");
        assert_eq!(c.byte_off, next_off);
        assert!(c.blocks >= 1 && c.blocks as u64 <= per);
        assert_eq!(c.bytes, c.blocks as u64 * block_size as u64);
        rw.chunk_cdb(cdb, c.lba, c.blocks, &mut out);
        assert!(out.len() >= rw.size, "a chunk CDB never shrinks");
        let back = RwCdb::parse(&out).expect("chunk CDB parses").expect("still splittable");
        assert_eq!(back.kind, rw.kind);
        assert_eq!((back.lba, back.blocks), (c.lba, c.blocks));
        if rw.size > 6 {
            assert_eq!(out[1], cdb[1], "byte 1 is kept");
        }
        next_lba += c.blocks as u64;
        next_off += c.bytes;
        total += c.blocks as u64;
    }
    assert_eq!(total, rw.blocks as u64, "the plan covers every block once");
    assert_eq!(next_off, total * block_size as u64);
});
