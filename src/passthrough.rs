//! One command's way through the handler: decide the direction, decide
//! whether to split, run the chunks through `dma`, and turn the outcome into
//! a ring completion.

use crate::dma::{self, ChunkIo, Scratch, Split};
use crate::error::CmdError;
use crate::scsi::cdb::RwCdb;
use crate::scsi::direction::{direction_of, DeviceClass, Direction};
use crate::scsi::opcodes;
use crate::scsi::policy::{self, Family, Policy, Refused};
use crate::scsi::sense::{status, Outcome, SgResult};
use crate::scsi::vpd;
use crate::tcmu::mapping::Mapping;
use crate::tcmu::ring::{CmdRequest, Completion, DataIov};

/// What the passthrough needs to know about a backing device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceParams {
    pub class: DeviceClass,
    /// Logical block size in bytes (512, 4096, ...).
    pub block_size: u32,
    /// The largest transfer one command may carry, in bytes.
    pub max_bytes: u64,
    /// Which command set the command policy holds it to.
    pub family: Family,
    /// The command policy and read-only mode (`scsi::policy`).
    pub policy: Policy,
}

/// How `execute` will run a command (exposed for tests and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Whole(Direction),
    Split(Direction, RwCdb),
}

/// Decides direction and splitting for `cmd` on `dev`.
pub fn route(cmd: &CmdRequest, dev: &DeviceParams) -> Result<Route, CmdError> {
    // One look at the command table, for the policy and the direction.
    let entry = opcodes::lookup(&cmd.cdb, dev.class);
    policy::judge_entry(&cmd.cdb, entry, dev.family, &dev.policy)?;
    if cmd.dif_cnt != 0 {
        return Err(CmdError::Dif);
    }
    let len = cmd.data_len();
    let dir = direction_of(&cmd.cdb, entry, len, !cmd.bidi_iovs.is_empty())?;
    if dir == Direction::Bidirectional {
        return Err(CmdError::Bidirectional);
    }
    if !dev.class.splits_by_lba() {
        return Ok(Route::Whole(dir));
    }
    let Some(rw) = RwCdb::parse(&cmd.cdb)? else {
        return Ok(Route::Whole(dir));
    };
    // Split only what exceeds the limit and whose buffer is exactly the
    // blocks the CDB names; anything else goes whole, as the initiator sent
    // it, and the backing device judges it.
    let exact = len == rw.blocks as u64 * dev.block_size as u64;
    if len <= dev.max_bytes || !exact || dir == Direction::None {
        return Ok(Route::Whole(dir));
    }
    if rw.protect != 0 {
        return Err(CmdError::ProtectedSplit(rw.protect));
    }
    Ok(Route::Split(dir, rw))
}

/// Executes one command with `io` and the opaque context `ctx`; a command
/// the device's policy refused comes back with its refusal, and `io` never
/// saw it.
pub fn execute<C, F>(
    cmd: &CmdRequest,
    dev: &DeviceParams,
    scratch: &mut Scratch,
    ctx: &mut C,
    io: F,
) -> (Direction, Outcome, Option<Refused>)
where
    F: FnMut(&mut C, &ChunkIo<'_>) -> Result<SgResult, CmdError>,
{
    match route(cmd, dev) {
        Err(e) => {
            log::debug!("cmd {} ({:02x}): {e}", cmd.cmd_id, cmd.cdb[0]);
            let mut o = e.outcome();
            o.residual = cmd.data_len();
            let refused = match e {
                CmdError::Refused(r) => Some(r),
                _ => None,
            };
            (Direction::None, o, refused)
        }
        Ok(Route::Whole(dir)) => (
            dir,
            dma::run(&cmd.cdb, dir, &cmd.iovs, None, scratch, ctx, io),
            None,
        ),
        Ok(Route::Split(dir, rw)) => {
            let split = Split {
                rw: &rw,
                block_size: dev.block_size,
                max_bytes: dev.max_bytes,
            };
            (
                dir,
                dma::run(&cmd.cdb, dir, &cmd.iovs, Some(split), scratch, ctx, io),
                None,
            )
        }
    }
}

/// What tcmu-sg changes in a response before it goes back to the
/// initiator: the Block Limits VPD page of a device it splits commands
/// for carries tcmu-sg's transfer limit (see `scsi::vpd`); a read-only
/// disk's or tape's MODE SENSE header has the WP bit set, and REPORT
/// SUPPORTED OPERATION CODES lists only what the policy lets through (see
/// `scsi::policy`). Reads and writes the command's data area in `map`,
/// through its iovecs.
pub fn adjust_response(cmd: &CmdRequest, dev: &DeviceParams, o: &Outcome, map: &Mapping) {
    if o.status != status::GOOD {
        return;
    }
    let moved = cmd.data_len() - o.residual.min(cmd.data_len());
    if vpd::is_block_limits_inquiry(&cmd.cdb) {
        if !dev.class.splits_by_lba() || dev.block_size == 0 {
            return;
        }
        let mut head = [0u8; 16];
        if moved < head.len() as u64 || !copy_head(map, &cmd.iovs, &mut head, false) {
            return;
        }
        let max_blocks = (dev.max_bytes / dev.block_size as u64).min(u32::MAX as u64) as u32;
        if vpd::cap_block_limits(&mut head, max_blocks) {
            copy_head(map, &cmd.iovs, &mut head, true);
        }
    } else if let Some(at) = policy::mode_sense_wp_byte(&cmd.cdb) {
        let mut head = [0u8; 4];
        let head = &mut head[..=at];
        if !policy::marks_write_protect(dev.family, &dev.policy)
            || moved < head.len() as u64
            || !copy_head(map, &cmd.iovs, head, false)
        {
            return;
        }
        head[at] |= 0x80;
        copy_head(map, &cmd.iovs, head, true);
    } else if policy::is_report_supported_opcodes(&cmd.cdb, dev.class)
        && !dev.policy.passes_everything()
    {
        let mut data = vec![0u8; moved as usize];
        if copy_head(map, &cmd.iovs, &mut data, false)
            && policy::filter_supported_opcodes(
                &cmd.cdb,
                &mut data,
                dev.class,
                dev.family,
                &dev.policy,
            )
        {
            copy_head(map, &cmd.iovs, &mut data, true);
        }
    }
}

/// Copies the first `buf.len()` bytes of a command's data out of the data
/// area (`to_map` false) or back into it; false if the iovecs hold fewer
/// or one is out of bounds.
fn copy_head(map: &Mapping, iovs: &[DataIov], buf: &mut [u8], to_map: bool) -> bool {
    let mut done = 0;
    for v in iovs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(v.len as usize);
        let part = &mut buf[done..done + n];
        let ok = if to_map {
            map.write_bytes(v.off, part).is_ok()
        } else {
            map.read_bytes(v.off, part).is_ok()
        };
        if !ok {
            return false;
        }
        done += n;
    }
    done == buf.len()
}

/// The ring completion for an outcome.
///
/// A data-in command carries `read_len` (the bytes it moved) when it moved
/// less than asked, and whenever it ended with CHECK CONDITION: the kernel
/// gathers the data area into the initiator's buffer with a CHECK
/// CONDITION only if `read_len` is given, as a tape's read that meets a
/// longer block (ILI, no residual) or a disk's RECOVERED ERROR needs; the
/// initiator then gets the data, the sense and the residual, as from the
/// device itself. A read that moved nothing says `read_len` 0, which
/// today's kernels ignore (the initiator sees no residual; see the users'
/// guide) and a kernel that honours it passes on as a full residual.
pub fn completion(cmd_id: u16, dir: Direction, total: u64, o: &Outcome) -> Completion {
    let mut c = Completion::good(cmd_id);
    c.scsi_status = o.status;
    let check = o.status == status::CHECK_CONDITION;
    if check {
        c.sense = o.sense;
    }
    let moved = total - o.residual.min(total);
    if dir == Direction::FromDevice && total > 0 && (moved < total || check) {
        c.read_len = Some(moved as u32);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::sense::code;
    use crate::tcmu::ring::DataIov;

    fn cmd(cdb: &[u8], len: u64) -> CmdRequest {
        CmdRequest {
            cmd_id: 1,
            cdb: cdb.to_vec(),
            iovs: if len > 0 {
                vec![DataIov { off: 0, len }]
            } else {
                vec![]
            },
            bidi_iovs: vec![],
            dif_cnt: 0,
            seen_after: None,
            read_at: None,
        }
    }

    const DEV: DeviceParams = DeviceParams {
        class: DeviceClass::Block,
        block_size: 512,
        max_bytes: 65536,
        family: Family::Disk,
        policy: Policy::FULL,
    };

    #[test]
    fn routes() {
        // Fits: whole.
        let r = route(&cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0], 65536), &DEV).unwrap();
        assert_eq!(r, Route::Whole(Direction::FromDevice));
        // Exceeds: split.
        let r = route(&cmd(&[0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0], 131072), &DEV).unwrap();
        assert!(matches!(r, Route::Split(Direction::ToDevice, _)));
        // Exceeds with a buffer that does not match the CDB: whole.
        let r = route(&cmd(&[0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0], 131072 + 512), &DEV).unwrap();
        assert_eq!(r, Route::Whole(Direction::ToDevice));
        // WRITE SAME, UNMAP, large: never split.
        let r = route(&cmd(&[0x41, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0], 512), &DEV).unwrap();
        assert_eq!(r, Route::Whole(Direction::ToDevice));
        // Protection information and a split: INVALID FIELD IN CDB.
        let e = route(&cmd(&[0x28, 0x20, 0, 0, 0, 0, 0, 1, 0, 0], 131072), &DEV).unwrap_err();
        assert_eq!(e.sense_code(), Some(code::INVALID_FIELD));
        // ... but passed whole when it fits.
        let r = route(&cmd(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 8, 0], 4096), &DEV).unwrap();
        assert_eq!(r, Route::Whole(Direction::FromDevice));
        // A tape's READ(6)/WRITE(6) carry a transfer length, no LBA: a
        // record over the limit goes whole, with its CDB untouched, on a
        // tape, a changer or an MMC drive alike.
        let read6 = [0x08, 0x00, 0x02, 0x00, 0x00, 0];
        // On a disk the same CDB is 256 blocks from LBA 512: split.
        let r = route(&cmd(&read6, 131072), &DEV).unwrap();
        assert!(matches!(r, Route::Split(Direction::FromDevice, _)));
        for class in [DeviceClass::Stream, DeviceClass::Changer, DeviceClass::Mmc] {
            let dev = DeviceParams { class, ..DEV };
            let r = route(&cmd(&read6, 131072), &dev).unwrap();
            assert_eq!(r, Route::Whole(Direction::FromDevice), "{class:?}");
            let write10 = [0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0];
            let r = route(&cmd(&write10, 131072), &dev).unwrap();
            assert_eq!(r, Route::Whole(Direction::ToDevice), "{class:?}");
        }
        // Unknown opcode with data: refused.
        let e = route(&cmd(&[0xc5, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096), &DEV).unwrap_err();
        assert_eq!(e.sense_code(), Some(code::INVALID_OPCODE));
    }

    #[test]
    fn the_policy_is_asked_first() {
        let std = DeviceParams {
            policy: Policy::default(),
            ..DEV
        };
        // FORMAT UNIT with data: refused by the policy, not by direction
        // or size, and the refusal is what execute hands back.
        let format = cmd(&[0x04, 0x10, 0, 0, 0, 0], 512);
        let e = route(&format, &std).unwrap_err();
        assert!(matches!(e, CmdError::Refused(_)), "{e}");
        assert_eq!(e.sense_code(), Some(code::INVALID_OPCODE));
        let mut calls = 0;
        let (dir, o, refused) = execute(
            &format,
            &std,
            &mut Scratch::default(),
            &mut calls,
            |n, _| {
                *n += 1;
                Ok(SgResult::good())
            },
        );
        assert_eq!((dir, calls, o.residual), (Direction::None, 0, 512));
        assert_eq!(refused.map(|r| r.name), Some("FORMAT UNIT"));
        // Under full it is routed as before.
        assert_eq!(
            route(&format, &DEV).unwrap(),
            Route::Whole(Direction::ToDevice)
        );
        // Read-only: a WRITE that would be split is refused whole.
        let mut ro = std;
        ro.policy.readonly = true;
        let write = cmd(&[0x2a, 0, 0, 0, 0, 0, 0, 1, 0, 0], 131072);
        let e = route(&write, &ro).unwrap_err();
        assert_eq!(e.sense_code(), Some(code::WRITE_PROTECTED));
        assert!(matches!(
            route(&cmd(&[0x28, 0, 0, 0, 0, 0, 0, 1, 0, 0], 131072), &ro).unwrap(),
            Route::Split(Direction::FromDevice, _)
        ));
    }

    #[test]
    fn completion_reports_short_reads() {
        let mut o = Outcome::good();
        o.residual = 512;
        let c = completion(3, Direction::FromDevice, 4096, &o);
        assert_eq!(c.read_len, Some(3584));
        let c = completion(3, Direction::ToDevice, 4096, &o);
        assert_eq!(c.read_len, None);
        let o = Outcome::check(code::READ_ERROR);
        let c = completion(3, Direction::FromDevice, 4096, &o);
        assert_eq!(c.scsi_status, 2);
        assert_eq!(c.sense[12], 0x11);
        // Data moved with CHECK CONDITION travels with the sense, all of it
        // too (a tape's ILI on a longer block, a RECOVERED ERROR).
        assert_eq!(c.read_len, Some(4096));
        // Nothing moved: read_len 0 (ignored by today's kernels).
        let mut o = Outcome::check(code::READ_ERROR);
        o.residual = 4096;
        assert_eq!(
            completion(3, Direction::FromDevice, 4096, &o).read_len,
            Some(0)
        );
        o.residual = 1024;
        assert_eq!(
            completion(3, Direction::FromDevice, 4096, &o).read_len,
            Some(3072)
        );
        // GOOD and complete: nothing to say.
        let c = completion(3, Direction::FromDevice, 4096, &Outcome::good());
        assert_eq!(c.read_len, None);
    }
}
