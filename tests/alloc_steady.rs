//! No heap allocation per command in the steady state: the ring read (with
//! recycled requests), the split/route/execute path and the completion
//! writer, counted by a global allocator while the mock kernel keeps the
//! ring busy.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tcmu_sg::dma::Scratch;
use tcmu_sg::passthrough::{completion, execute, DeviceParams};
use tcmu_sg::scsi::direction::DeviceClass;
use tcmu_sg::scsi::sense::SgResult;
use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::{MockData, MockKernel};
use tcmu_sg::tcmu::ring::{CmdRequest, Entry, Ring};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations made on a thread while that thread has counting on.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: p was allocated by System.alloc with layout l.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counted<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.load(Ordering::Relaxed) - before)
}

#[test]
fn the_command_path_does_not_allocate_in_steady_state() {
    let flags = MAILBOX_FLAG_CAP_OOOC | MAILBOX_FLAG_CAP_READ_LEN;
    let mut k = MockKernel::new(64 << 10, 512, flags);
    let map = k.mapping();
    let mut ring = Ring::new(map.clone()).unwrap();
    let dev = DeviceParams {
        class: DeviceClass::Block,
        block_size: 512,
        max_bytes: 8192, // the 32 KiB reads below are split in 4
        family: tcmu_sg::scsi::policy::Family::Disk,
        policy: tcmu_sg::scsi::policy::Policy::FULL,
    };
    let mut scratch = Scratch::default();
    let mut entries: Vec<Entry> = Vec::new();
    let mut spare: Vec<CmdRequest> = Vec::new();
    let mut total_allocs = Vec::new();
    for round in 0..40 {
        // The kernel queues a mix: split reads, a write, a short read.
        for i in 0..4u32 {
            let mut cdb = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 64, 0];
            cdb[5] = i as u8;
            k.queue_cmd(&cdb, MockData::In(64 * 512)).unwrap();
        }
        k.queue_cmd(
            &[0x2a, 0, 0, 0, 1, 0, 0, 0, 8, 0],
            MockData::Out(vec![7; 4096]),
        )
        .unwrap();
        let (n, allocs) = counted(|| {
            entries.clear();
            ring.poll_recycling(tcmu_sg::expiry::Stamp::now(), &mut entries, &mut spare)
                .unwrap();
            let mut n = 0;
            for e in entries.drain(..) {
                let Entry::Cmd(cmd) = e else { continue };
                let mut ctx = &*map;
                let (dir, o, _) = execute(&cmd, &dev, &mut scratch, &mut ctx, |m, io| {
                    // Touch the data as a device would, without allocating.
                    for v in io.iovs {
                        m.fill(v.off, v.len, 0x5a).unwrap();
                    }
                    let mut r = SgResult::good();
                    if io.cdb[0] == 0x28 && io.cdb[5] == 3 {
                        r.resid = 512; // one short read
                    }
                    Ok(r)
                });
                ring.complete(completion(cmd.cmd_id, dir, cmd.data_len(), &o))
                    .unwrap();
                spare.push(cmd);
                n += 1;
            }
            ring.flush();
            n
        });
        assert_eq!(n, 5);
        assert_eq!(k.handle_completions().unwrap(), 5);
        // Warm-up: buffers grow to their working size in the first rounds.
        if round >= 10 {
            total_allocs.push(allocs);
        }
    }
    assert!(!k.is_broken());
    assert!(
        total_allocs.iter().all(|a| *a == 0),
        "allocations per round after warm-up: {total_allocs:?}"
    );
    // The counter works: an allocation inside the region is seen.
    let (_, a) = counted(|| std::hint::black_box(vec![1u8; 10]));
    assert_eq!(a, 1);
}
