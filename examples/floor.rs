//! The floor of a TCMU handler on this machine, for the benchmarks (not a
//! feature, never packaged): a handler that completes every command of one
//! `floor/` user backstore at once, without backing I/O. One thread: it
//! waits for the doorbell, reads the ring, answers, publishes and rings
//! back, the least any handler does per command. It answers what an
//! initiator's disk driver asks to attach (INQUIRY, READ CAPACITY, MODE
//! SENSE) with a 256 MiB disk of 512-byte blocks and everything else with
//! GOOD, moving no data.
//!
//!   floor NAME       (serves tcm-user/<hba>/NAME/floor/...; until killed)

use std::path::Path;

use tcmu_sg::tcmu::mapping::Mapping;
use tcmu_sg::tcmu::ring::{attach, CmdRequest, Completion, Entry};
use tcmu_sg::tcmu::uio::{scan, UioDevice};

const BLOCKS: u64 = 256 << 11;

/// Writes `data` into the command's data-in buffer (as much as fits).
fn give(map: &Mapping, cmd: &CmdRequest, data: &[u8]) {
    let mut done = 0;
    for v in &cmd.iovs {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(v.len as usize);
        let _ = map.write_bytes(v.off, &data[done..done + n]);
        done += n;
    }
}

fn answer(map: &Mapping, cmd: &CmdRequest) {
    let c = &cmd.cdb;
    match c[0] {
        0x12 if c[1] & 1 == 0 => {
            let mut d = [b' '; 36];
            d[..5].copy_from_slice(&[0, 0, 6, 2, 31]);
            d[5..8].fill(0);
            d[8..13].copy_from_slice(b"FLOOR");
            d[16..21].copy_from_slice(b"floor");
            d[32..36].copy_from_slice(b"0001");
            give(map, cmd, &d);
        }
        // A VPD page: empty (page 0 lists only itself).
        0x12 => give(map, cmd, &[0, c[2], 0, u8::from(c[2] == 0), 0]),
        0x25 => {
            let mut d = [0u8; 8];
            d[..4].copy_from_slice(&((BLOCKS - 1) as u32).to_be_bytes());
            d[4..].copy_from_slice(&512u32.to_be_bytes());
            give(map, cmd, &d);
        }
        0x9e if c[1] & 0x1f == 0x10 => {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
            d[8..12].copy_from_slice(&512u32.to_be_bytes());
            give(map, cmd, &d);
        }
        0x1a => give(map, cmd, &[3, 0, 0, 0]),
        0x5a => give(map, cmd, &[0, 6, 0, 0, 0, 0, 0, 0]),
        _ => {}
    }
}

fn main() -> std::io::Result<()> {
    let name = std::env::args().nth(1).expect("usage: floor NAME");
    let sys = Path::new("/sys");
    let dev = loop {
        if let Some(d) = scan(sys, "floor")
            .into_iter()
            .find(|d| d.name.device == name)
        {
            break d;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let uio = UioDevice::open(sys, Path::new("/dev"), &dev.uio)?;
    // Attached as the daemon attaches (its configfs actions): what the
    // kernel queued before completes BUSY.
    let mut store = configfs::Target::default()
        .user_backstore(dev.name.hba, &dev.name.device)
        .map_err(std::io::Error::other)?;
    let mut ring = attach(uio.map.clone(), &mut store).map_err(std::io::Error::other)?;
    eprintln!("floor: serving {} ({})", name, dev.uio);
    let (mut entries, mut spare) = (Vec::new(), Vec::new());
    let mut revents = [0i16; 1];
    loop {
        tcmu_sg::sys::poll_in(&[uio.fd()], -1, &mut revents)?;
        let _ = tcmu_sg::sys::read_u32(uio.fd());
        entries.clear();
        ring.poll_recycling(tcmu_sg::expiry::Stamp::now(), &mut entries, &mut spare)
            .map_err(std::io::Error::other)?;
        for e in entries.drain(..) {
            let c = match e {
                Entry::Cmd(cmd) => {
                    answer(&uio.map, &cmd);
                    let c = Completion::good(cmd.cmd_id);
                    spare.push(cmd);
                    c
                }
                Entry::BadCmd { cmd_id, .. } => Completion::good(cmd_id),
                Entry::Unknown { cmd_id, .. } => Completion {
                    unknown_op: true,
                    ..Completion::good(cmd_id)
                },
                Entry::Tmr { .. } => continue,
            };
            ring.complete(c).map_err(std::io::Error::other)?;
        }
        if ring.flush() {
            uio.kick()?;
        }
    }
}
