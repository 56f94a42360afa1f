//! Property tests: chunk plans cover exactly the original LBA and byte
//! ranges, chunk CDBs decode to their chunk, the iovec walk covers the
//! buffer exactly once, and random completion orders never break the ring.

use proptest::prelude::*;
use tcmu_sg::dma::{run, ChunkIo, Scratch, Split};
use tcmu_sg::scsi::cdb::{plan, RwCdb};
use tcmu_sg::scsi::direction::Direction;
use tcmu_sg::scsi::sense::SgResult;
use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::{MockData, MockKernel};
use tcmu_sg::tcmu::ring::{Completion, DataIov, Entry, Ring};

/// A splittable CDB of size 6/10/12/16 whose fields hold lba and blocks.
fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..4,
        any::<u64>(),
        1u32..70_000,
        any::<u8>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(k, lba, blocks, b1, group, write)| {
            let mut c;
            match k {
                0 => {
                    c = vec![if write { 0x0a } else { 0x08 }, 0, 0, 0, 0, group];
                    let lba = lba & 0x1f_ffff;
                    c[1] = (b1 & 0xe0) | (lba >> 16) as u8;
                    c[2] = (lba >> 8) as u8;
                    c[3] = lba as u8;
                    c[4] = (blocks % 256) as u8;
                }
                1 => {
                    c = vec![
                        if write { 0x2a } else { 0x28 },
                        b1 & 0x1f,
                        0,
                        0,
                        0,
                        0,
                        group,
                        0,
                        0,
                        0x80,
                    ];
                    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                    c[7..9].copy_from_slice(&((blocks % 65536).max(1) as u16).to_be_bytes());
                }
                2 => {
                    c = vec![0; 12];
                    c[0] = if write { 0xaa } else { 0xa8 };
                    c[1] = b1 & 0x1f;
                    c[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
                    c[6..10].copy_from_slice(&blocks.to_be_bytes());
                    c[10] = group;
                }
                _ => {
                    c = vec![0; 16];
                    c[0] = if write { 0x8a } else { 0x88 };
                    c[1] = b1 & 0x1f;
                    c[2..10].copy_from_slice(&(lba >> 8).to_be_bytes());
                    c[10..14].copy_from_slice(&blocks.to_be_bytes());
                    c[14] = group;
                }
            }
            c
        })
}

proptest! {
    #[test]
    fn chunk_plans_cover_exactly_the_original_range(
        cdb in cdb_strategy(),
        bs in prop_oneof![Just(512u32), Just(4096u32)],
        max in 1u64..(8 << 20),
    ) {
        let rw = RwCdb::parse(&cdb).unwrap().unwrap();
        let mut next_lba = rw.lba;
        let mut next_byte = 0u64;
        let per_chunk = (max / bs as u64).max(1) * bs as u64;
        let mut out = Vec::new();
        for c in plan(&rw, bs, max) {
            prop_assert_eq!(c.lba, next_lba);
            prop_assert_eq!(c.byte_off, next_byte);
            prop_assert_eq!(c.bytes, c.blocks as u64 * bs as u64);
            prop_assert!(c.bytes <= per_chunk);
            prop_assert_eq!(c.byte_off % bs as u64, 0);
            // The chunk CDB says exactly this chunk, same family, never shorter.
            rw.chunk_cdb(&cdb, c.lba, c.blocks, &mut out);
            prop_assert!(out.len() >= cdb.len());
            let back = RwCdb::parse(&out).unwrap().unwrap();
            prop_assert_eq!((back.kind, back.lba, back.blocks), (rw.kind, c.lba, c.blocks));
            // Byte 1, the group number (6, 10 or 14 by size) and the control
            // byte survive, also when the CDB grew.
            let group_at = |n: usize| match n { 10 => 6, 12 => 10, _ => 14 };
            prop_assert_eq!(out[out.len() - 1], cdb[cdb.len() - 1]);
            if cdb.len() > 6 {
                prop_assert_eq!(out[1], cdb[1]);
                prop_assert_eq!(out[group_at(out.len())], cdb[group_at(cdb.len())]);
            }
            next_lba += c.blocks as u64;
            next_byte += c.bytes;
        }
        prop_assert_eq!(next_lba, rw.lba + rw.blocks as u64);
        prop_assert_eq!(next_byte, rw.blocks as u64 * bs as u64);
    }

    #[test]
    fn the_iovec_walk_covers_the_buffer_once_in_order(
        lens in prop::collection::vec(1u64..20_000, 1..40),
        max_blocks in 1u64..64,
    ) {
        // Lay iovecs out with gaps; make the total a whole number of blocks.
        let mut iovs = Vec::new();
        let mut off = 0u64;
        for l in &lens {
            iovs.push(DataIov { off, len: *l });
            off += l + 4096;
        }
        let total: u64 = lens.iter().sum();
        let pad = (512 - total % 512) % 512;
        iovs.last_mut().unwrap().len += pad;
        let total = total + pad;
        let blocks = (total / 512) as u32;
        let mut cdb = vec![0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        let rw = RwCdb::parse(&cdb).unwrap().unwrap();
        let split = Split { rw: &rw, block_size: 512, max_bytes: max_blocks * 512 };
        let mut seen: Vec<DataIov> = Vec::new();
        let mut calls = 0u32;
        let mut ctx = (&mut seen, &mut calls);
        let o = run(&cdb, Direction::FromDevice, &iovs, Some(split), &mut Scratch::default(), &mut ctx,
            |(seen, calls): &mut (&mut Vec<DataIov>, &mut u32), io: &ChunkIo<'_>| {
                assert_eq!(io.iovs.iter().map(|v| v.len).sum::<u64>(), io.len);
                assert!(io.len <= max_blocks * 512 && io.len.is_multiple_of(512));
                seen.extend_from_slice(io.iovs);
                **calls += 1;
                Ok(SgResult::good())
            });
        prop_assert!(o.is_good());
        prop_assert_eq!(o.residual, 0);
        prop_assert_eq!(calls as u64, (blocks as u64).div_ceil(max_blocks));
        // Merge adjacent pieces back: the original list comes out.
        let mut merged: Vec<DataIov> = Vec::new();
        for v in seen {
            match merged.last_mut() {
                Some(m) if m.off + m.len == v.off => m.len += v.len,
                _ => merged.push(v),
            }
        }
        prop_assert_eq!(merged, iovs);
    }

    #[test]
    fn random_completion_orders_never_break_the_ring(
        ops in prop::collection::vec((0u8..3, 0usize..8, any::<u16>()), 1..300),
        ooo in any::<bool>(),
    ) {
        let flags = MAILBOX_FLAG_CAP_READ_LEN | if ooo { MAILBOX_FLAG_CAP_OOOC } else { 0 };
        let mut k = MockKernel::new(4096, 32, flags);
        let mut ring = Ring::new(k.mapping()).unwrap();
        let mut pending: Vec<u16> = Vec::new();
        let mut queued = 0usize;
        for (op, pick, len) in ops {
            match op {
                0 => {
                    let data = if len % 3 == 0 { MockData::In((len % 9000) as u64 + 1) } else { MockData::None };
                    if k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], data).is_ok() {
                        queued += 1;
                    }
                    if len % 5 == 0 {
                        let _ = k.queue_tmr(1, &[len]);
                    }
                }
                1 => {
                    for e in ring.poll().unwrap() {
                        if let Entry::Cmd(c) = e {
                            pending.push(c.cmd_id);
                        }
                    }
                }
                _ => {
                    if !pending.is_empty() {
                        let id = pending.remove(pick % pending.len());
                        ring.complete(Completion::good(id)).unwrap();
                        ring.flush();
                        k.handle_completions().unwrap();
                    }
                }
            }
        }
        for e in ring.poll().unwrap() {
            if let Entry::Cmd(c) = e {
                pending.push(c.cmd_id);
            }
        }
        for id in pending.drain(..).rev() {
            ring.complete(Completion::good(id)).unwrap();
        }
        ring.flush();
        k.handle_completions().unwrap();
        prop_assert!(!k.is_broken());
        prop_assert_eq!(k.completed.len(), queued);
        prop_assert_eq!(k.inflight(), 0);
    }
}

proptest! {
    /// Whatever the ring holds, reading it neither panics nor loops, and
    /// every command it yields has iovecs inside the data area.
    #[test]
    fn hostile_ring_contents_are_contained(
        writes in prop::collection::vec((0usize..4096, any::<u64>()), 0..64),
        head in 0u32..4096,
    ) {
        let mut k = MockKernel::new(8192, 16, MAILBOX_FLAG_CAP_OOOC);
        let m = k.mapping();
        let mut ring = Ring::new(m.clone()).unwrap();
        for _ in 0..5 {
            let _ = k.queue_cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], MockData::In(512));
        }
        for (off, v) in writes {
            let off = (MAILBOX_SIZE + off) as u64 & !7;
            let _ = m.write_u64(off, v);
        }
        m.store_release_u32(MB_CMD_HEAD as u64, head & !7).unwrap();
        if let Ok(entries) = ring.poll() {
            for e in entries {
                if let Entry::Cmd(c) = e {
                    for v in c.iovs.iter().chain(&c.bidi_iovs) {
                        prop_assert!(v.off >= ring.data_off());
                        prop_assert!(v.off + v.len <= m.len() as u64);
                    }
                    prop_assert!(!c.cdb.is_empty() && c.cdb.len() <= 260);
                }
            }
        }
    }
}
