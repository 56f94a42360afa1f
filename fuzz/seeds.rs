//! Writes the seed corpora under fuzz/corpus/ (run once; the seeds are
//! committed): `cargo +nightly run --manifest-path fuzz/Cargo.toml --bin seeds`.
//! Ring seeds are rings the mock kernel laid out as the 6.1 kernel does.

use std::fs;
use std::path::Path;

use tcmu_sg::tcmu::abi::*;
use tcmu_sg::tcmu::mock::{MockData, MockKernel};

const RING: usize = 16 << 10;

fn put(target: &str, name: &str, bytes: &[u8]) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

/// mode 1 (valid mailbox), head, then the command ring's bytes.
fn ring_seed(k: &MockKernel) -> Vec<u8> {
    let m = k.mapping();
    let head = m.read_u32(MB_CMD_HEAD as u64).unwrap();
    let mut ring = vec![0u8; RING - MAILBOX_SIZE];
    m.read_bytes(MAILBOX_SIZE as u64, &mut ring).unwrap();
    let mut out = vec![1u8];
    out.extend_from_slice(&head.to_le_bytes());
    out.extend_from_slice(&ring);
    out
}

fn main() {
    // Rings: a few commands of each shape, a TMR, a wrap with PAD.
    let mut k = MockKernel::new(RING, 4, 0x0f);
    k.queue_cmd(&[0x12, 0, 0, 0, 36, 0], MockData::In(36)).unwrap();
    k.queue_cmd(&[0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0], MockData::Out(vec![7; 4096]))
        .unwrap();
    k.queue_cmd(&[0x00; 6], MockData::None).unwrap();
    put("ring", "three-commands", &ring_seed(&k));
    k.queue_tmr(5, &[1, 2]).unwrap();
    let cdb16 = vec![0x88, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 2, 0, 0];
    k.queue_cmd(&cdb16, MockData::In(1024)).unwrap();
    put("ring", "tmr-and-read16", &ring_seed(&k));
    let mut w = MockKernel::new(RING, 4, 0x0f);
    for _ in 0..140 {
        w.queue_cmd(&[0x00; 6], MockData::None).unwrap();
        w.handle_completions().unwrap();
        // Completes nothing (no handler): keep the ring from filling.
        if w.inflight() > 100 {
            break;
        }
    }
    put("ring", "many", &ring_seed(&w));
    let mut mb = vec![0u8];
    mb.extend_from_slice(&[2, 0, 0x0f, 0, 128, 0, 0, 0, 0x80, 0x3f, 0, 0]);
    put("ring", "mailbox", &mb);

    // CDBs: selector, 3 bytes of limit, the CDB.
    let seeds: [(&str, &[u8]); 5] = [
        ("read6", &[0x08, 0x01, 0x23, 0x45, 0x00, 0x00]),
        ("write10", &[0x2a, 0x08, 0, 0, 0x10, 0, 0x05, 0x01, 0x00, 0]),
        ("read12", &[0xa8, 0, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0x10, 0, 0x03, 0]),
        ("write16", &[0x8a, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0x11, 0]),
        ("verify16", &[0x8f, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
    ];
    for (name, cdb) in seeds {
        let mut s = vec![0u8, 0x00, 0x00, 0x01];
        s.extend_from_slice(cdb);
        put("cdb", name, &s);
    }

    // Config strings.
    for (i, s) in [
        "sg//dev/sdb",
        "sg//dev/disk/by-id/wwn-0x5000;max_xfer_kb=64;timeout_s=5;max_inflight=8",
        "/dev/sg3",
        "sg//dev/../etc/passwd",
        "sg//dev/sdb;max_xfer_kb=0",
    ]
    .iter()
    .enumerate()
    {
        put("config", &format!("cfg-{i}"), s.as_bytes());
    }

    // SG_IO results: header bytes, then sense.
    let mut medium = vec![0u8, 0, 0x02, 0, 0, 0, 0, 2, 0, 0, 18, 0, 0x10, 0, 0, 0];
    medium.extend_from_slice(&[
        0x70, 0, 0x03, 0, 0, 0x12, 0x34, 0x0a, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 0,
    ]);
    put("sense", "medium-error", &medium);
    put("sense", "errno", &[1u8, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]);
    put("sense", "host-timeout", &[0u8, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
    let mut desc = vec![0u8, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 2, 0, 0];
    desc.extend_from_slice(&[0x72, 0x05, 0x24, 0, 0, 0, 0, 0]);
    put("sense", "descriptor", &desc);

    // Policy: class, policy (bit 7: read-only), data length, the CDB.
    let seeds: [(&str, &[u8]); 6] = [
        ("write-buffer-download", &[0, 1, 2, 0x3b, 0x05, 0, 0, 0, 0, 0, 0x10, 0, 0]),
        ("sanitize-ro", &[0, 0x80, 0, 0x48, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("ata16", &[0, 1, 1, 0x85, 0x08, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xec, 0]),
        ("write10-ro", &[0, 0x81, 2, 0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
        ("tape-write-filemarks", &[1, 0x81, 0, 0x10, 0, 0, 0, 1, 0]),
        ("zone-reset", &[0, 0x81, 0, 0x94, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    ];
    for (name, s) in seeds {
        put("policy", name, s);
    }
}
