//! The ring engine and the passthrough path against the mock kernel.

mod common;

use common::{read10, write10, RamDisk};
use tcmu_sg::dma::Scratch;
use tcmu_sg::passthrough::{completion, execute, DeviceParams};
use tcmu_sg::scsi::direction::{DeviceClass, Direction};
use tcmu_sg::scsi::sense::{code, decode, status};
use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::{MockData, MockError, MockKernel};
use tcmu_sg::tcmu::ring::{
    attach, AttachError, BadCommand, Completion, Entry, Ring, RingActions, RingError,
};

const ALL: u16 = MAILBOX_FLAG_CAP_OOOC
    | MAILBOX_FLAG_CAP_READ_LEN
    | MAILBOX_FLAG_CAP_TMR
    | MAILBOX_FLAG_CAP_KEEP_BUF;

const DEV: DeviceParams = DeviceParams {
    class: DeviceClass::Block,
    block_size: 512,
    max_bytes: 1 << 20,
    family: tcmu_sg::scsi::policy::Family::Disk,
    policy: tcmu_sg::scsi::policy::Policy::FULL,
};

/// Reads every new entry, runs commands on the disk and completes them in
/// ring order; returns how many commands the kernel saw complete.
fn serve(k: &mut MockKernel, ring: &mut Ring, disk: &mut RamDisk, dev: &DeviceParams) -> usize {
    let map = k.mapping();
    let mut scratch = Scratch::default();
    for e in ring.poll().unwrap() {
        let c = match e {
            Entry::Cmd(cmd) => {
                let mut ctx = (&mut *disk, &*map);
                let (dir, o, _) = execute(&cmd, dev, &mut scratch, &mut ctx, RamDisk::io);
                completion(cmd.cmd_id, dir, cmd.data_len(), &o)
            }
            Entry::BadCmd { cmd_id, why } => {
                let o = tcmu_sg::error::CmdError::Ring(why).outcome();
                completion(cmd_id, Direction::None, 0, &o)
            }
            Entry::Unknown { cmd_id, .. } => {
                let mut c = Completion::good(cmd_id);
                c.unknown_op = true;
                c
            }
            Entry::Tmr { .. } => continue,
        };
        ring.complete(c).unwrap();
    }
    ring.flush();
    k.handle_completions().unwrap()
}

#[test]
fn write_then_read_round_trips_through_the_data_area() {
    let mut k = MockKernel::new(64 << 10, 256, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    assert!(ring.ooo_completion() && ring.read_len_supported());
    let mut disk = RamDisk::new(512, 4096);
    let payload: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8).collect();
    k.queue_cmd(&write10(100, 16), MockData::Out(payload.clone()))
        .unwrap();
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 1);
    assert_eq!(&disk.data[100 * 512..116 * 512], &payload[..]);
    let q = k.queue_cmd(&read10(100, 16), MockData::In(8192)).unwrap();
    serve(&mut k, &mut ring, &mut disk, &DEV);
    let c = k.completed.last().unwrap();
    assert_eq!((c.cmd_id, c.status), (q.cmd_id, status::GOOD));
    assert_eq!(c.data, payload);
    assert!(!k.is_broken());
}

#[test]
fn entries_are_laid_out_as_the_6_1_kernel_does() {
    let mut k = MockKernel::new(64 << 10, 16, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let q = k
        .queue_cmd(&[0x12, 0, 0, 0, 36, 0], MockData::In(36))
        .unwrap();
    let m = k.mapping();
    // One iovec, 6-byte CDB: a 120-byte entry with the CDB 112 bytes in.
    assert_eq!(q.entry_len, 120);
    assert_eq!(m.read_u64(q.entry_off + 24).unwrap(), q.entry_off + 112);
    assert_eq!(m.read_u32(q.entry_off + 8).unwrap(), 1);
    assert_eq!(m.read_u64(q.entry_off + 48).unwrap(), k.data_off());
    assert_eq!(m.read_u64(q.entry_off + 56).unwrap(), 36);
    match &ring.poll().unwrap()[0] {
        Entry::Cmd(c) => {
            assert_eq!(c.cdb, vec![0x12, 0, 0, 0, 36, 0]);
            assert_eq!(c.iovs.len(), 1);
            assert_eq!(c.iovs[0].off, k.data_off());
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn cdbs_of_6_to_32_bytes_are_copied_exactly() {
    let mut k = MockKernel::new(64 << 10, 16, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut var32 = vec![0u8; 32];
    var32[0] = 0x7f;
    var32[7] = 24;
    var32[9] = 0x09;
    var32[31] = 0xee;
    let cdbs: Vec<Vec<u8>> = vec![
        vec![0x00, 0, 0, 0, 0, 0x01],
        vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0x02],
        vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03],
        vec![0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x04],
        var32,
        vec![0xc5, 1, 2, 3, 4, 5, 6, 7, 8, 0x05],
    ];
    for c in &cdbs {
        k.queue_cmd(c, MockData::None).unwrap();
    }
    let got: Vec<Vec<u8>> = ring
        .poll()
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::Cmd(c) => c.cdb,
            e => panic!("{e:?}"),
        })
        .collect();
    assert_eq!(got, cdbs);
}

#[test]
fn wrap_with_pad_keeps_every_command() {
    // A 4 KiB ring: 3968 bytes of entries, wraps every ~30 commands.
    let mut k = MockKernel::new(4096, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 1024);
    let mut total = 0;
    for round in 0..50u32 {
        // Varying CDB sizes and iovec counts move the head unevenly.
        for i in 0..3u32 {
            let lba = (round * 3 + i) % 1000;
            k.queue_cmd(&write10(lba, 1), MockData::Out(vec![round as u8; 512]))
                .unwrap();
        }
        k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
        total += serve(&mut k, &mut ring, &mut disk, &DEV);
    }
    assert_eq!(total, 200);
    assert!(
        k.pads >= 3,
        "the ring wrapped with PAD entries ({})",
        k.pads
    );
    assert!(!k.is_broken());
    assert!(k.completed.iter().all(|c| c.status == status::GOOD));
}

#[test]
fn a_nearly_full_ring_drains_and_refills() {
    let mut k = MockKernel::new(4096, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 1024);
    let mut queued = 0;
    while k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).is_ok() {
        queued += 1;
    }
    assert!(queued > 20);
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), queued);
    // Space is back, across the wrap (a PAD may take one entry's room).
    let mut again = 0;
    while k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).is_ok() {
        again += 1;
    }
    assert!(again >= queued - 1, "{again} < {queued} - 1");
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), again);
    assert!(!k.is_broken());
}

fn polled_ids(ring: &mut Ring) -> Vec<u16> {
    ring.poll()
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::Cmd(c) => c.cmd_id,
            e => panic!("{e:?}"),
        })
        .collect()
}

#[test]
fn out_of_order_completion_reaches_the_kernel_with_the_right_ids() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    for _ in 0..5 {
        k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    }
    let ids = polled_ids(&mut ring);
    // Complete the last first, each with its own status.
    for (n, id) in ids.iter().rev().enumerate() {
        let mut c = Completion::good(*id);
        c.scsi_status = [0x00, 0x08, 0x18, 0x28, 0x00][n];
        ring.complete(c).unwrap();
        assert!(ring.flush());
        assert_eq!(k.handle_completions().unwrap(), 1, "visible at once");
    }
    let seen: Vec<(u16, u8)> = k.completed.iter().map(|c| (c.cmd_id, c.status)).collect();
    let want: Vec<(u16, u8)> = ids
        .iter()
        .rev()
        .zip([0x00, 0x08, 0x18, 0x28, 0x00])
        .map(|(i, s)| (*i, s))
        .collect();
    assert_eq!(seen, want);
    assert!(!k.is_broken());
}

#[test]
fn without_ooo_completions_wait_for_the_ones_before_them() {
    // A kernel without OOOC, and one with it where the handler was told to
    // complete in order (`run --in-order`).
    for (flags, force) in [(MAILBOX_FLAG_CAP_READ_LEN, false), (ALL, true)] {
        let mut k = MockKernel::new(64 << 10, 64, flags);
        let mut ring = Ring::new(k.mapping()).unwrap();
        if force {
            ring.force_in_order();
        }
        assert!(!ring.ooo_completion());
        for _ in 0..3 {
            k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
        }
        let ids = polled_ids(&mut ring);
        ring.complete(Completion::good(ids[2])).unwrap();
        ring.complete(Completion::good(ids[1])).unwrap();
        assert!(!ring.flush(), "nothing can pass the first command");
        assert_eq!(k.handle_completions().unwrap(), 0);
        ring.complete(Completion::good(ids[0])).unwrap();
        assert!(ring.flush());
        assert_eq!(k.handle_completions().unwrap(), 3);
        let order: Vec<u16> = k.completed.iter().map(|c| c.cmd_id).collect();
        assert_eq!(order, ids);
    }
}

#[test]
fn double_and_stale_completions_are_refused() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    let ids = polled_ids(&mut ring);
    ring.complete(Completion::good(ids[0])).unwrap();
    assert!(ring.complete(Completion::good(ids[0])).is_err());
    assert!(ring.complete(Completion::good(999)).is_err());
    ring.flush();
    assert_eq!(k.handle_completions().unwrap(), 1);
    assert!(!k.is_broken());
}

#[test]
fn the_mock_breaks_the_ring_on_an_unknown_id_like_the_kernel() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let q = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    let m = k.mapping();
    m.write_u16(q.entry_off + HDR_CMD_ID as u64, 4321).unwrap();
    m.store_release_u32(MB_CMD_TAIL as u64, q.entry_len as u32)
        .unwrap();
    assert!(k.handle_completions().is_err());
    assert!(k.is_broken());
    assert!(k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).is_err());
}

#[test]
fn short_reads_are_reported_with_read_len() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 1024);
    disk.short_by = 1536;
    k.queue_cmd(&read10(0, 8), MockData::In(4096)).unwrap();
    serve(&mut k, &mut ring, &mut disk, &DEV);
    let c = &k.completed[0];
    assert_eq!(c.status, status::GOOD);
    assert_ne!(c.uflags & UFLAG_READ_LEN, 0);
    assert_eq!(c.read_len, 4096 - 1536);
    assert_eq!(c.data, disk.data[..4096 - 1536].to_vec());

    // Without the capability no READ_LEN is claimed.
    let mut k = MockKernel::new(64 << 10, 64, MAILBOX_FLAG_CAP_OOOC);
    let mut ring = Ring::new(k.mapping()).unwrap();
    k.queue_cmd(&read10(0, 8), MockData::In(4096)).unwrap();
    serve(&mut k, &mut ring, &mut disk, &DEV);
    assert_eq!(k.completed[0].uflags & UFLAG_READ_LEN, 0);
}

#[test]
fn bad_iovec_offsets_get_check_condition_and_are_never_read() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let m = k.mapping();
    let len = m.len() as u64;
    let data_off = k.data_off();
    let cases: [(u64, u64); 4] = [
        (64, 512),                // inside the command ring
        (len - 256, 512),         // runs past the mapping
        (u64::MAX - 100, 512),    // wraps
        (data_off, u64::MAX / 2), // absurd length
    ];
    let mut disk = RamDisk::new(512, 1024);
    let before = disk.data.clone();
    for (base, l) in cases {
        let q = k
            .queue_cmd(&write10(0, 1), MockData::Out(vec![0xab; 512]))
            .unwrap();
        m.write_u64(q.entry_off + REQ_IOV as u64, base).unwrap();
        m.write_u64(q.entry_off + REQ_IOV as u64 + 8, l).unwrap();
        // The ring reports the entry as bad ...
        let entries = ring.poll().unwrap();
        let [Entry::BadCmd {
            cmd_id,
            why: why @ BadCommand::Iovec { .. },
        }] = &entries[..]
        else {
            panic!("{entries:?}");
        };
        // ... and the handler completes it without reaching the device.
        let o = tcmu_sg::error::CmdError::Ring(why.clone()).outcome();
        ring.complete(completion(*cmd_id, Direction::None, 0, &o))
            .unwrap();
        ring.flush();
        assert_eq!(k.handle_completions().unwrap(), 1);
        let c = k.completed.last().unwrap();
        assert_eq!(c.status, status::CHECK_CONDITION);
        assert_eq!(decode(&c.sense), Some(code::TARGET_FAILURE));
    }
    assert!(disk.cdbs.is_empty(), "no bad command reached the device");
    assert_eq!(disk.data, before);
    // A good command on the same ring still works.
    k.queue_cmd(&write10(0, 1), MockData::Out(vec![0xab; 512]))
        .unwrap();
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 1);
    assert_eq!(disk.data[..512], [0xab; 512]);
    assert!(!k.is_broken());
}

#[test]
fn hostile_cdb_offsets_and_iov_counts_are_caught() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let m = k.mapping();
    let q = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    m.write_u64(q.entry_off + REQ_CDB_OFF as u64, 0).unwrap();
    let q2 = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    m.write_u32(q2.entry_off + REQ_IOV_CNT as u64, 1_000_000)
        .unwrap();
    let e = ring.poll().unwrap();
    assert!(matches!(
        e[0],
        Entry::BadCmd {
            why: BadCommand::CdbOffset(0),
            ..
        }
    ));
    assert!(matches!(
        e[1],
        Entry::BadCmd {
            why: BadCommand::IovCount { .. },
            ..
        }
    ));
}

#[test]
fn a_lying_entry_length_stops_the_walk() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let m = k.mapping();
    let mut ring = Ring::new(m.clone()).unwrap();
    let q = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    m.write_u32(q.entry_off, OP_CMD).unwrap(); // length 0
    assert!(matches!(ring.poll(), Err(RingError::EntryLen { .. })));
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let m = k.mapping();
    let mut ring = Ring::new(m.clone()).unwrap();
    let q = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    m.write_u32(q.entry_off, (1 << 20) | OP_CMD).unwrap(); // past head
    assert!(matches!(ring.poll(), Err(RingError::EntryLen { .. })));
    m.store_release_u32(MB_CMD_HEAD as u64, 3).unwrap();
    assert!(matches!(ring.poll(), Err(RingError::Head(3))));
}

#[test]
fn unknown_entry_opcodes_complete_with_unknown_op() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let m = k.mapping();
    let mut ring = Ring::new(m.clone()).unwrap();
    let q = k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    m.write_u32(q.entry_off, q.entry_len as u32 | 5).unwrap();
    let mut disk = RamDisk::new(512, 8);
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 1);
    assert_ne!(k.completed[0].uflags & UFLAG_UNKNOWN_OP, 0);
    assert!(disk.cdbs.is_empty());
}

#[test]
fn tmr_entries_are_parsed_and_skipped() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    k.queue_tmr(1, &[1, 7]).unwrap();
    k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    let e = ring.poll().unwrap();
    assert_eq!(
        e[1],
        Entry::Tmr {
            tmr_type: TmrType::AbortTask,
            cmd_ids: vec![1, 7]
        }
    );
    for id in [1u16, 2] {
        ring.complete(Completion::good(id)).unwrap();
    }
    ring.flush();
    assert_eq!(k.handle_completions().unwrap(), 2);
    assert!(!k.is_broken());
}

/// Queues three 4 KiB writes, runs only the third and completes it first
/// (out of order), then the handler dies with the other two in flight.
/// Returns the payloads.
fn die_after_an_out_of_order_completion(
    k: &mut MockKernel,
    ring: &mut Ring,
    disk: &mut RamDisk,
) -> Vec<Vec<u8>> {
    let payloads: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 4096]).collect();
    let ids: Vec<u16> = (0..3)
        .map(|i| {
            k.queue_cmd(
                &write10(8 * i, 8),
                MockData::Out(payloads[i as usize].clone()),
            )
            .unwrap()
            .cmd_id
        })
        .collect();
    assert_eq!(ids, [1, 2, 3], "the kernel hands out the lowest free ids");
    let mut cmds: Vec<_> = ring
        .poll()
        .unwrap()
        .into_iter()
        .map(|e| match e {
            Entry::Cmd(c) => c,
            other => panic!("{other:?}"),
        })
        .collect();
    let third = cmds.pop().unwrap();
    let mut scratch = Scratch::default();
    let map = k.mapping();
    let mut ctx = (&mut *disk, &*map);
    let (dir, o, _) = execute(&third, &DEV, &mut scratch, &mut ctx, RamDisk::io);
    ring.complete(completion(third.cmd_id, dir, third.data_len(), &o))
        .unwrap();
    ring.flush();
    assert_eq!(k.handle_completions().unwrap(), 1);
    // With out-of-order completion the third's response went into the
    // first command's slot; the slots of 2 and 3 stay between tail and
    // head, and 3 is complete.
    payloads
}

/// The restart bug: entries between cmd_tail and cmd_head can be commands
/// already completed, so a new handler must not read them. `Ring::new`
/// refuses such a ring (the handler before this fix read [2, 3] here and ran
/// the completed write 3 a second time).
#[test]
fn a_ring_with_entries_a_previous_handler_left_is_not_read() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut disk = RamDisk::new(512, 64);
    let mut ring = Ring::new(k.mapping()).unwrap();
    die_after_an_out_of_order_completion(&mut k, &mut ring, &mut disk);
    drop(ring);
    assert!(matches!(
        Ring::new(k.mapping()),
        Err(RingError::Stale { .. })
    ));
}

/// A restart after out-of-order completion replays nothing: attaching
/// resets the ring (the kernel completes the commands still in flight with
/// BUSY, for the initiator to retry), and the kernel's ids, handed out
/// again from the lowest, reach the right commands.
#[test]
fn a_restart_after_out_of_order_completion_replays_nothing() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut disk = RamDisk::new(512, 64);
    let mut ring = attach(k.mapping(), &mut k).unwrap();
    let payloads = die_after_an_out_of_order_completion(&mut k, &mut ring, &mut disk);
    drop(ring); // the daemon dies
    let cdbs_before = disk.cdbs.len();
    let mut ring = attach(k.mapping(), &mut k).unwrap();
    assert_eq!(ring.poll().unwrap(), vec![], "nothing is read again");
    let done: Vec<(u16, u8)> = k.completed.iter().map(|c| (c.cmd_id, c.status)).collect();
    assert_eq!(
        done,
        vec![(3, 0x00), (1, 0x08), (2, 0x08)],
        "3 GOOD once; 1 and 2 BUSY"
    );
    assert!(!k.is_broken());
    assert_eq!(k.inflight(), 0);
    // The initiator retries 1 and 2; they get ids 1 and 2 again and run
    // once each, as themselves.
    for i in 0..2u32 {
        let q = k
            .queue_cmd(
                &write10(8 * i, 8),
                MockData::Out(payloads[i as usize].clone()),
            )
            .unwrap();
        assert_eq!(q.cmd_id, i as u16 + 1);
    }
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 2);
    assert_eq!(
        disk.cdbs.len(),
        cdbs_before + 2,
        "each retried write ran once"
    );
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(&disk.data[i * 4096..(i + 1) * 4096], &p[..]);
    }
    // A read reuses id 1 and gets its own data.
    let q = k.queue_cmd(&read10(16, 8), MockData::In(4096)).unwrap();
    assert_eq!(q.cmd_id, 1);
    serve(&mut k, &mut ring, &mut disk, &DEV);
    let c = k.completed.last().unwrap();
    assert_eq!((c.cmd_id, c.status), (1, 0));
    assert_eq!(c.data, payloads[2]);
    assert!(!k.is_broken());
}

/// Commands that arrive while the device is blocked for the reset are
/// refused (the kernel answers them BUSY); once attached, they are served.
#[test]
fn commands_during_attach_are_refused_then_served() {
    struct Racing<'a>(&'a mut MockKernel, Option<MockError>);
    impl RingActions for Racing<'_> {
        fn block(&mut self, on: bool) -> Result<(), String> {
            self.0.block(on)?;
            if on {
                // An initiator's command arrives while blocked.
                self.1 = self.0.queue_cmd(&[0, 0, 0, 0, 0, 0], MockData::None).err();
            }
            Ok(())
        }
        fn reset(&mut self) -> Result<(), String> {
            self.0.reset()
        }
    }
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let m = k.mapping();
    let mut r = Racing(&mut k, None);
    let mut ring = attach(m, &mut r).unwrap();
    assert_eq!(r.1, Some(MockError::Blocked));
    let mut disk = RamDisk::new(512, 8);
    k.queue_cmd(&[0, 0, 0, 0, 0, 0], MockData::None).unwrap();
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 1);
}

/// A failed reset leaves nothing blocked and no ring to serve.
#[test]
fn attach_fails_cleanly_when_the_reset_fails() {
    struct NoReset(bool);
    impl RingActions for NoReset {
        fn block(&mut self, on: bool) -> Result<(), String> {
            self.0 = on;
            Ok(())
        }
        fn reset(&mut self) -> Result<(), String> {
            Err("permission denied".into())
        }
    }
    let k = MockKernel::new(64 << 10, 64, ALL);
    let mut a = NoReset(false);
    let Err(e) = attach(k.mapping(), &mut a) else {
        panic!("attached without a reset");
    };
    assert!(matches!(e, AttachError::Action(_)), "{e}");
    assert!(!a.0, "left unblocked");
}

#[test]
fn cmd_ids_wrap_around() {
    let mut k = MockKernel::new(64 << 10, 64, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 8);
    k.set_next_id(0xfffe);
    for _ in 0..4 {
        k.queue_cmd(&[0x00, 0, 0, 0, 0, 0], MockData::None).unwrap();
    }
    assert_eq!(serve(&mut k, &mut ring, &mut disk, &DEV), 4);
    let ids: Vec<u16> = k.completed.iter().map(|c| c.cmd_id).collect();
    assert_eq!(ids, vec![0xfffe, 0xffff, 1, 2]);
}

#[test]
fn split_commands_over_fragmented_iovecs_match_whole_ones() {
    // Fragment the data area so each 4 KiB block is its own iovec.
    let mut k = MockKernel::new(64 << 10, 512, ALL);
    k.fragment(2);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 8192);
    let small = DeviceParams {
        max_bytes: 3 * 512, // chunks end inside iovecs
        ..DEV
    };
    let payload: Vec<u8> = (0..64 * 512u32).map(|i| (i * 31 % 253) as u8).collect();
    let q = k
        .queue_cmd(&write10(1000, 64), MockData::Out(payload.clone()))
        .unwrap();
    assert!(k.iovs(q.cmd_id).unwrap().len() > 4);
    serve(&mut k, &mut ring, &mut disk, &small);
    assert_eq!(&disk.data[1000 * 512..1064 * 512], &payload[..]);
    let writes: Vec<_> = disk.cdbs.iter().filter(|c| c[0] == 0x2a).collect();
    assert_eq!(writes.len(), 22, "ceil(64 / 3) chunks");
    k.queue_cmd(&read10(1000, 64), MockData::In(64 * 512))
        .unwrap();
    serve(&mut k, &mut ring, &mut disk, &small);
    assert_eq!(k.completed.last().unwrap().data, payload);
}

#[test]
fn a_split_read_stops_at_the_failing_chunk_with_its_sense() {
    let mut k = MockKernel::new(64 << 10, 512, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 8192);
    disk.bad_lba = Some(0x1234);
    let dev = DeviceParams {
        max_bytes: 64 << 10,
        ..DEV
    };
    k.queue_cmd(&read10(0x1100, 0x400), MockData::In(0x400 * 512))
        .unwrap();
    serve(&mut k, &mut ring, &mut disk, &dev);
    let c = k.completed.last().unwrap();
    assert_eq!(c.status, status::CHECK_CONDITION);
    assert_eq!(&c.sense[..18], &RamDiskSense::at(0x1234)[..]);
    // Chunks 0x1100 and 0x1180 went fine; 0x1200 failed; nothing after.
    let reads: Vec<u32> = disk
        .cdbs
        .iter()
        .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
        .collect();
    assert_eq!(reads, vec![0x1100, 0x1180, 0x1200]);
    // The good chunks' data reached the initiator (READ_LEN).
    assert_eq!(c.read_len, 2 * 128 * 512);
}

struct RamDiskSense;
impl RamDiskSense {
    fn at(lba: u32) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0xf0;
        s[2] = 0x03;
        s[3..7].copy_from_slice(&lba.to_be_bytes());
        s[7] = 10;
        s[12] = 0x11;
        s
    }
}

#[test]
fn protected_commands_that_need_splitting_are_refused() {
    let mut k = MockKernel::new(64 << 10, 512, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 8192);
    let dev = DeviceParams {
        max_bytes: 4096,
        ..DEV
    };
    let mut cdb = read10(0, 16);
    cdb[1] = 0x20; // RDPROTECT=1
    k.queue_cmd(&cdb, MockData::In(8192)).unwrap();
    serve(&mut k, &mut ring, &mut disk, &dev);
    let c = k.completed.last().unwrap();
    assert_eq!(c.status, status::CHECK_CONDITION);
    assert_eq!(decode(&c.sense), Some(code::INVALID_FIELD));
    assert!(disk.cdbs.is_empty());
}

/// The Block Limits page the initiator gets carries tcmu-sg's transfer
/// limit (1 MiB of 512-byte blocks here), the rest of it the device's.
#[test]
fn the_block_limits_page_carries_the_transfer_limit() {
    let mut k = MockKernel::new(64 << 10, 16, ALL);
    let mut ring = Ring::new(k.mapping()).unwrap();
    let mut disk = RamDisk::new(512, 4096);
    let map = k.mapping();
    k.queue_cmd(&[0x12, 0x01, 0xb0, 0, 64, 0], MockData::In(64))
        .unwrap();
    let Entry::Cmd(cmd) = ring.poll().unwrap().remove(0) else {
        panic!("a command")
    };
    let mut ctx = (&mut disk, &*map);
    let (dir, o, _) = execute(&cmd, &DEV, &mut Scratch::default(), &mut ctx, RamDisk::io);
    tcmu_sg::passthrough::adjust_response(&cmd, &DEV, &o, &map);
    ring.complete(completion(cmd.cmd_id, dir, cmd.data_len(), &o))
        .unwrap();
    ring.flush();
    k.handle_completions().unwrap();
    let page = &k.completed[0].data;
    assert_eq!(page.len(), 64);
    assert_eq!(u32::from_be_bytes(page[8..12].try_into().unwrap()), 2048);
    // The device's optimal length (2048) is not above the limit: kept.
    assert_eq!(u32::from_be_bytes(page[12..16].try_into().unwrap()), 2048);
    assert_eq!(page[3], 0x3c);
    // A tape's would not be touched.
    let tape = DeviceParams {
        class: DeviceClass::Stream,
        family: tcmu_sg::scsi::policy::Family::Tape,
        ..DEV
    };
    let mut before = [0u8; 16];
    map.read_bytes(cmd.iovs[0].off, &mut before).unwrap();
    map.write_bytes(cmd.iovs[0].off + 8, &[0; 4]).unwrap();
    tcmu_sg::passthrough::adjust_response(&cmd, &tape, &o, &map);
    let mut after = [0u8; 4];
    map.read_bytes(cmd.iovs[0].off + 8, &mut after).unwrap();
    assert_eq!(after, [0; 4]);
}
