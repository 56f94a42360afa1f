//! `tcmu-sg ring-dump`: shows the raw layout of the entries the kernel has
//! queued on a device nobody serves yet, and checks it against the ABI this
//! handler assumes (used by the VM tests against the running kernel).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::tcmu::abi::*;
use crate::tcmu::uio::{self, UioDevice};

/// Waits up to `wait` for at least one entry on the `sg` device named
/// `device`, prints every queued entry, and returns an error if any entry
/// disagrees with the ABI.
pub fn ring_dump(device: &str, wait: Duration) -> Result<(), String> {
    let sys = Path::new("/sys");
    let t0 = Instant::now();
    let d = loop {
        if let Some(d) = uio::scan(sys, "sg")
            .into_iter()
            .find(|d| d.name.device == device)
        {
            break d;
        }
        if t0.elapsed() > wait {
            return Err(format!("no sg device named {device}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let u = UioDevice::open(sys, Path::new("/dev"), &d.uio).map_err(|e| e.to_string())?;
    let m = &u.map;
    let rd32 = |o: u64| m.read_u32(o).map_err(|e| e.to_string());
    let version = m.read_u16(MB_VERSION as u64).map_err(|e| e.to_string())?;
    let flags = m.read_u16(MB_FLAGS as u64).map_err(|e| e.to_string())?;
    let cmdr_off = rd32(MB_CMDR_OFF as u64)? as u64;
    let cmdr_size = rd32(MB_CMDR_SIZE as u64)? as u64;
    println!(
        "{}: mailbox version {version} flags {flags:#x} cmdr_off {cmdr_off} cmdr_size {cmdr_size:#x} map {:#x}",
        d.uio,
        m.len()
    );
    let tail = m
        .load_acquire_u32(MB_CMD_TAIL as u64)
        .map_err(|e| e.to_string())? as u64;
    let mut head;
    loop {
        head = m
            .load_acquire_u32(MB_CMD_HEAD as u64)
            .map_err(|e| e.to_string())? as u64;
        if head != tail || t0.elapsed() > wait {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if head == tail {
        return Err("no entry was queued".into());
    }
    let data_off = cmdr_off + cmdr_size;
    let mut pos = tail;
    let mut problems = Vec::new();
    let mut n = 0;
    while pos != head && n < 1024 {
        n += 1;
        let e = cmdr_off + pos;
        let len_op = rd32(e)?;
        let (op, len) = (len_op & OP_MASK, (len_op & !OP_MASK) as u64);
        let id = m
            .read_u16(e + HDR_CMD_ID as u64)
            .map_err(|e| e.to_string())?;
        if op == OP_CMD {
            let iov_cnt = rd32(e + REQ_IOV_CNT as u64)? as u64;
            let cdb_off = m
                .read_u64(e + REQ_CDB_OFF as u64)
                .map_err(|e| e.to_string())?;
            let mut cdb = [0u8; 16];
            m.read_bytes(cdb_off, &mut cdb).map_err(|e| e.to_string())?;
            let mut iovs = Vec::new();
            for i in 0..iov_cnt.min(8) {
                let at = e + REQ_IOV as u64 + i * IOVEC_SIZE as u64;
                let b = m.read_u64(at).map_err(|e| e.to_string())?;
                let l = m.read_u64(at + 8).map_err(|e| e.to_string())?;
                iovs.push(format!("{b:#x}+{l}"));
                if b < data_off || b + l > m.len() as u64 {
                    problems.push(format!("entry {pos}: iovec {i} outside the data area"));
                }
            }
            let want_cdb = e + base_cmd_size(iov_cnt as usize) as u64;
            println!(
                "entry at {pos}: CMD len {len} cmd_id {id} iov_cnt {iov_cnt} cdb_off = entry + {} cdb {:02x?} iov [{}]",
                cdb_off - e,
                &cdb[..crate::scsi::cdb::group_size(cdb[0]).unwrap_or(16)],
                iovs.join(", ")
            );
            if cdb_off != want_cdb {
                problems.push(format!(
                    "entry {pos}: cdb_off {cdb_off:#x}, ABI says {want_cdb:#x}"
                ));
            }
            let cdb_len = crate::scsi::cdb::group_size(cdb[0]).unwrap_or(16);
            if len as usize != cmd_size(iov_cnt as usize, cdb_len) {
                problems.push(format!(
                    "entry {pos}: length {len} differs from the ABI size"
                ));
            }
        } else {
            println!("entry at {pos}: op {op} len {len}");
        }
        if len == 0 {
            problems.push(format!("entry {pos}: zero length"));
            break;
        }
        pos = (pos + len) % cmdr_size;
    }
    if problems.is_empty() {
        println!("layout OK");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
