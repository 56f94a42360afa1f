//! The ring as a hostile kernel could leave it: a mailbox of arbitrary
//! bytes, or a valid mailbox over a command ring of arbitrary bytes with an
//! arbitrary head. Properties: no panic, no access outside the mapping (the
//! mapping checks every access; a violation would be an error, and an
//! error here is fine), every command yielded has its CDB and iovecs
//! inside its bounds, and every command can be completed exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::MockKernel;
use tcmu_sg::tcmu::ring::{Completion, Entry, Ring, MAX_CDB_LEN};

const RING: usize = 16 << 10;
const BLOCKS: u64 = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = MockKernel::new(RING, BLOCKS, 0x0f);
    let m = k.mapping();
    if mode & 1 == 0 {
        // A hostile mailbox: whatever Ring::new says, it must not panic.
        let n = rest.len().min(MAILBOX_SIZE);
        m.write_bytes(0, &rest[..n]).unwrap();
        if let Ok(mut ring) = Ring::new(m.clone()) {
            let _ = ring.poll();
        }
        return;
    }
    let mut ring = Ring::new(m.clone()).unwrap();
    if mode & 2 != 0 {
        ring.force_in_order();
    }
    let Some((head, body)) = rest.split_at_checked(4) else {
        return;
    };
    let cmdr = RING - MAILBOX_SIZE;
    let n = body.len().min(cmdr);
    m.write_bytes(MAILBOX_SIZE as u64, &body[..n]).unwrap();
    let head = u32::from_le_bytes(head.try_into().unwrap()) % cmdr as u32;
    m.store_release_u32(MB_CMD_HEAD as u64, head).unwrap();
    let Ok(entries) = ring.poll() else {
        return;
    };
    let data_off = ring.data_off();
    let mut ids = Vec::new();
    for e in entries {
        match e {
            Entry::Cmd(c) => {
                assert!(!c.cdb.is_empty() && c.cdb.len() <= MAX_CDB_LEN);
                for v in c.iovs.iter().chain(&c.bidi_iovs) {
                    assert!(v.off >= data_off, "iovec before the data area");
                    assert!(v.off + v.len <= m.len() as u64, "iovec past the mapping");
                }
                ids.push(c.cmd_id);
            }
            Entry::BadCmd { cmd_id, .. } | Entry::Unknown { cmd_id, .. } => ids.push(cmd_id),
            Entry::Tmr { .. } => {}
        }
    }
    // Complete in reverse (out of order): each once, a second time refused.
    for id in ids.iter().rev() {
        ring.complete(Completion::good(*id)).unwrap();
        assert!(ring.complete(Completion::good(*id)).is_err());
    }
    ring.flush();
    assert_eq!(ring.outstanding(), 0);
});
