//! No stale write after a stall, on the mock kernel: with LIO's
//! `cmd_time_out` modelled (`MockKernel::advance` fails commands back when
//! their time runs out and leaves their entries in the ring), the start
//! rule of `tcmu_sg::expiry` never lets a command the kernel may have
//! failed back reach the disk, nor start an SG_IO that could outlive the
//! command, and never refuses a command a daemon that keeps reading its
//! ring finds.

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::{write10, RamDisk};
use proptest::prelude::*;
use tcmu_sg::dma::Scratch;
use tcmu_sg::error::CmdError;
use tcmu_sg::expiry::{Stamp, Timing, BLOCK_SG_FLOOR, CLOCK_SLACK};
use tcmu_sg::passthrough::{completion, execute, DeviceParams};
use tcmu_sg::scsi::direction::DeviceClass;
use tcmu_sg::scsi::sense::status;
use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::{MockData, MockKernel};
use tcmu_sg::tcmu::ring::{CmdRequest, Entry, Ring};

const ALL: u16 = MAILBOX_FLAG_CAP_OOOC | MAILBOX_FLAG_CAP_READ_LEN | MAILBOX_FLAG_CAP_TMR;

const DEV: DeviceParams = DeviceParams {
    class: DeviceClass::Block,
    block_size: 512,
    max_bytes: 4096,
    family: tcmu_sg::scsi::policy::Family::Disk,
    policy: tcmu_sg::scsi::policy::Policy::FULL,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// What the daemon does with one command it starts at the mock's `now`:
/// every SG_IO (every chunk) is admitted by the rule or declined with
/// `CmdError::Expired`; the completion goes into the ring. Returns the
/// starts the rule allowed.
fn run(
    k: &mut MockKernel,
    ring: &mut Ring,
    disk: &mut RamDisk,
    timing: &Timing,
    cmd: &CmdRequest,
) -> u32 {
    let map = k.mapping();
    let now = k.now();
    let mut sent = 0;
    let mut ctx = (&mut *disk, &*map);
    let (dir, o, _) = execute(cmd, &DEV, &mut Scratch::default(), &mut ctx, |c, io| {
        if !timing.may_start(cmd.seen_after, now) {
            return Err(CmdError::Expired {
                waited: now.since(cmd.seen_after.unwrap()),
            });
        }
        sent += 1;
        RamDisk::io(c, io)
    });
    ring.complete(completion(cmd.cmd_id, dir, cmd.data_len(), &o))
        .unwrap();
    ring.flush();
    sent
}

/// Reads the ring at the mock's clock.
fn read(k: &MockKernel, ring: &mut Ring) -> Vec<CmdRequest> {
    ring.poll_at(k.now())
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Entry::Cmd(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn block(disk: &RamDisk, lba: usize) -> &[u8] {
    &disk.data[lba * 512..lba * 512 + 4096]
}

/// The scenario of the issue: the daemon stops; a WRITE of A is queued and
/// failed back by LIO after cmd_time_out; B is written to the same blocks
/// another way; the daemon resumes and finds the WRITE in its ring.
#[test]
fn a_write_failed_back_during_a_stall_never_reaches_the_disk() {
    let mut k = MockKernel::new(64 << 10, 256, ALL);
    k.set_cmd_time_out(secs(10.0));
    let mut ring = Ring::new_at(k.mapping(), k.now()).unwrap();
    // cmd_time_out 10 s, SG_IO timeout 2 s on a block node (7 s floor).
    let timing = Timing::new(secs(10.0), secs(2.0), BLOCK_SG_FLOOR);
    assert_eq!(timing.window(), Some(secs(1.0)));
    let mut disk = RamDisk::new(512, 4096);
    assert!(read(&k, &mut ring).is_empty());

    // The daemon stops just after this read; the WRITE comes 0.5 s later.
    k.advance(secs(0.5));
    let a = k
        .queue_cmd(&write10(100, 8), MockData::Out(vec![b'A'; 4096]))
        .unwrap();
    k.advance(secs(10.5));
    assert_eq!(
        k.failed_back.iter().map(|f| f.0).collect::<Vec<_>>(),
        [a.cmd_id]
    );
    disk.data[100 * 512..108 * 512].fill(b'B');
    k.advance(secs(4.0));

    // Resumed: the WRITE is found and refused, BUSY, without reaching the disk.
    let found = read(&k, &mut ring);
    assert_eq!(found.len(), 1);
    assert_eq!(run(&mut k, &mut ring, &mut disk, &timing, &found[0]), 0);
    assert!(block(&disk, 100).iter().all(|b| *b == b'B'));
    k.handle_completions().unwrap();
    assert!(
        k.completed.is_empty(),
        "the initiator was told once, by LIO"
    );
    assert_eq!(k.late.len(), 1);
    assert_eq!(
        (k.late[0].cmd_id, k.late[0].status),
        (a.cmd_id, status::BUSY)
    );

    // A WRITE queued after the resume runs.
    k.advance(secs(0.2));
    let c = k
        .queue_cmd(&write10(100, 8), MockData::Out(vec![b'C'; 4096]))
        .unwrap();
    k.advance(secs(0.1));
    let found = read(&k, &mut ring);
    assert_eq!(found.len(), 1);
    assert_eq!(run(&mut k, &mut ring, &mut disk, &timing, &found[0]), 1);
    assert!(block(&disk, 100).iter().all(|b| *b == b'C'));
    k.handle_completions().unwrap();
    assert_eq!(
        (k.completed[0].cmd_id, k.completed[0].status),
        (c.cmd_id, status::GOOD)
    );
    assert!(!k.is_broken());
}

/// A command read at once but left waiting for a thread ages from the read
/// before the one that found it; a split command is checked before every
/// chunk, so a stall in the middle of one stops it at the next chunk.
#[test]
fn a_wait_after_the_read_counts_and_every_chunk_is_checked() {
    let mut k = MockKernel::new(64 << 10, 256, ALL);
    k.set_cmd_time_out(secs(30.0));
    let mut ring = Ring::new_at(k.mapping(), k.now()).unwrap();
    let timing = Timing::new(secs(30.0), secs(20.0), BLOCK_SG_FLOOR);
    assert_eq!(timing.window(), Some(secs(5.0)));
    let mut disk = RamDisk::new(512, 4096);
    k.advance(secs(0.1));
    k.queue_cmd(&write10(0, 8), MockData::Out(vec![1; 4096]))
        .unwrap();
    k.queue_cmd(&write10(8, 8), MockData::Out(vec![2; 4096]))
        .unwrap();
    k.advance(secs(0.1));
    let mut found = read(&k, &mut ring);
    // The first starts at once; the second waits 4.9 s for a thread and
    // still may; a third, read with them, waits 5.1 s and may not.
    assert_eq!(run(&mut k, &mut ring, &mut disk, &timing, &found[0]), 1);
    k.advance(secs(4.7));
    assert_eq!(run(&mut k, &mut ring, &mut disk, &timing, &found[1]), 1);
    k.queue_cmd(&write10(16, 8), MockData::Out(vec![3; 4096]))
        .unwrap();
    found = read(&k, &mut ring);
    k.advance(secs(5.1));
    assert_eq!(run(&mut k, &mut ring, &mut disk, &timing, &found[0]), 0);
    assert!(!block(&disk, 16).iter().all(|b| *b == 3));

    // A 12-chunk WRITE: chunks run while they may; a stall between two
    // chunks is modelled by a closure that moves the clock on.
    k.advance(secs(0.5));
    read(&k, &mut ring);
    k.queue_cmd(&write10(64, 96), MockData::Out(vec![9; 96 * 512]))
        .unwrap();
    let cmd = read(&k, &mut ring).remove(0);
    let map = k.mapping();
    let mut sent = 0;
    let start = k.now();
    let (dir, o, _) = execute(
        &cmd,
        &DEV,
        &mut Scratch::default(),
        &mut (&mut disk, &*map),
        |c, io| {
            // Each chunk takes 2 s.
            let now = start + secs(2.0 * sent as f64);
            if !timing.may_start(cmd.seen_after, now) {
                return Err(CmdError::Expired { waited: secs(0.0) });
            }
            sent += 1;
            RamDisk::io(c, io)
        },
    );
    // Chunks start at 0, 2 and 4 s; the one at 6 s may not.
    assert_eq!(sent, 3);
    assert_eq!(o.status, status::BUSY);
    assert_eq!(o.residual, 9 * 4096);
    ring.complete(completion(cmd.cmd_id, dir, cmd.data_len(), &o))
        .unwrap();
    ring.flush();
    k.handle_completions().unwrap();
    assert!(!k.is_broken());
}

/// A daemon that reads its ring at least every `scan_every` and starts
/// what it finds within its window never refuses a command, however long
/// it runs.
#[test]
fn a_daemon_that_keeps_reading_is_never_taken_for_a_stalled_one() {
    for (t, sg, floor) in [
        (30.0, 20.0, BLOCK_SG_FLOOR),
        (10.0, 2.0, BLOCK_SG_FLOOR),
        (10.0, 2.0, Duration::ZERO),
        (600.0, 500.0, Duration::ZERO),
    ] {
        let mut k = MockKernel::new(64 << 10, 256, ALL);
        k.set_cmd_time_out(secs(t));
        let mut ring = Ring::new_at(k.mapping(), k.now()).unwrap();
        let timing = Timing::new(secs(t), secs(sg), floor);
        let w = timing.window().unwrap();
        let mut disk = RamDisk::new(512, 4096);
        let mut refused = 0;
        for i in 0..200u32 {
            // Idle scans until a command comes, at most scan_every apart.
            for _ in 0..(i % 3) {
                k.advance(timing.scan_every());
                assert!(read(&k, &mut ring).is_empty());
            }
            k.advance(timing.scan_every() / 2);
            k.queue_cmd(&write10(i % 512, 1), MockData::Out(vec![i as u8; 512]))
                .unwrap();
            k.advance(timing.scan_every() / 2);
            for cmd in read(&k, &mut ring) {
                // It waits for a thread, up to what the scan period and the
                // clock's slack leave of the window.
                k.advance((w - timing.scan_every() - CLOCK_SLACK) * 9 / 10);
                if run(&mut k, &mut ring, &mut disk, &timing, &cmd) == 0 {
                    refused += 1;
                }
            }
            // The leader reads again as soon as its thread is free.
            assert!(read(&k, &mut ring).is_empty());
            k.handle_completions().unwrap();
        }
        assert_eq!(refused, 0, "cmd_time_out {t} s, SG_IO timeout {sg} s");
        assert_eq!(k.completed.len(), 200);
        assert!(k.failed_back.is_empty());
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The initiator queues a WRITE of one block.
    Queue(u8),
    /// Time passes (ms), as in a stall or a long SG_IO.
    Pass(u32),
    /// The leader reads the ring.
    Read,
    /// A thread takes the oldest command read and runs it.
    Start,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<u8>().prop_map(Step::Queue),
        3 => prop_oneof![0u32..1500, 0u32..20_000].prop_map(Step::Pass),
        2 => Just(Step::Read),
        3 => Just(Step::Start),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the interleaving of commands, stalls, reads and waits for a
    /// thread: every SG_IO the rule lets start ends, its bound and margin
    /// included, before LIO can fail its command back; so no command LIO
    /// failed back ever reaches the disk.
    #[test]
    fn no_command_runs_past_its_deadline(
        t in prop_oneof![Just(10u64), Just(30), Just(120)],
        sg in 1u64..30,
        block_node in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut k = MockKernel::new(64 << 10, 512, ALL);
        k.set_cmd_time_out(Duration::from_secs(t));
        let mut ring = Ring::new_at(k.mapping(), k.now()).unwrap();
        let floor = if block_node { BLOCK_SG_FLOOR } else { Duration::ZERO };
        let timing = Timing::new(Duration::from_secs(t), Duration::from_secs(sg), floor);
        let mut disk = RamDisk::new(512, 4096);
        let mut waiting: VecDeque<CmdRequest> = VecDeque::new();
        for s in steps {
            match s {
                Step::Queue(v) => {
                    let _ = k.queue_cmd(&write10(v as u32, 1), MockData::Out(vec![v; 512]));
                }
                Step::Pass(ms) => k.advance(Duration::from_millis(ms as u64)),
                Step::Read => waiting.extend(read(&k, &mut ring)),
                Step::Start => {
                    let Some(cmd) = waiting.pop_front() else { continue };
                    let deadline: Stamp = k.deadline(cmd.cmd_id).unwrap();
                    let expired = k.expired(cmd.cmd_id);
                    if run(&mut k, &mut ring, &mut disk, &timing, &cmd) > 0 {
                        prop_assert!(!expired, "cmd {} ran after LIO failed it back", cmd.cmd_id);
                        prop_assert!(
                            k.now() + CLOCK_SLACK + timing.sg_bound + timing.margin <= deadline,
                            "cmd {}: an SG_IO started {:?} before its deadline",
                            cmd.cmd_id,
                            deadline.since(k.now())
                        );
                    }
                    k.handle_completions().unwrap();
                }
            }
        }
        prop_assert!(!k.is_broken());
    }
}
