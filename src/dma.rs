//! Walks a command's iovecs chunk by chunk and calls an I/O function for
//! each chunk with an opaque per-request context (not a device handle), so
//! the same chunking serves every backend.
//!
//! Chunks run one after another; the first whose result is not GOOD (or that
//! moved less than asked) ends the command with that chunk's status and
//! sense, and the residual is that chunk's residual plus every byte not
//! attempted. The I/O function may also decline a chunk with one of our
//! own errors (it is then not sent; see `crate::expiry`): that ends the
//! command the same way, with the error's status. Running chunks concurrently would leave "which status, which
//! residual" undefined (SCST's disk_exec makes the same choice).

use crate::error::CmdError;
use crate::scsi::cdb::{plan, RwCdb};
use crate::scsi::direction::Direction;
use crate::scsi::sense::{outcome, Outcome, SgResult};
use crate::tcmu::ring::DataIov;

/// One call to the backend: a CDB and the iovecs it moves.
#[derive(Debug)]
pub struct ChunkIo<'a> {
    pub cdb: &'a [u8],
    pub dir: Direction,
    pub iovs: &'a [DataIov],
    /// Sum of `iovs` lengths.
    pub len: u64,
}

/// Buffers reused from command to command so the steady state does not
/// allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    cdb: Vec<u8>,
    iovs: Vec<DataIov>,
}

/// How a command is to be split.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    pub rw: &'a RwCdb,
    pub block_size: u32,
    pub max_bytes: u64,
}

/// A position inside an iovec list.
struct Cursor {
    index: usize,
    off: u64,
}

/// Appends to `out` the iovecs covering the next `bytes` bytes after the
/// cursor, splitting an iovec where the boundary falls inside it. Returns
/// the bytes actually covered (less only if the list runs out).
fn take(iovs: &[DataIov], cur: &mut Cursor, mut bytes: u64, out: &mut Vec<DataIov>) -> u64 {
    let mut got = 0;
    while bytes > 0 && cur.index < iovs.len() {
        let v = iovs[cur.index];
        let n = (v.len - cur.off).min(bytes);
        if n > 0 {
            out.push(DataIov {
                off: v.off + cur.off,
                len: n,
            });
        }
        cur.off += n;
        bytes -= n;
        got += n;
        if cur.off == v.len {
            cur.index += 1;
            cur.off = 0;
        }
    }
    got
}

/// Runs `cdb` over `iovs`: whole when `split` is `None`, else chunk by
/// chunk. `io` is called with the opaque context `ctx` for each chunk; it
/// returns the SG_IO result, or the error for which it did not send it.
pub fn run<C, F>(
    cdb: &[u8],
    dir: Direction,
    iovs: &[DataIov],
    split: Option<Split<'_>>,
    scratch: &mut Scratch,
    ctx: &mut C,
    mut io: F,
) -> Outcome
where
    F: FnMut(&mut C, &ChunkIo<'_>) -> Result<SgResult, CmdError>,
{
    let total: u64 = iovs.iter().map(|v| v.len).sum();
    // The outcome of one call: an error declined means nothing moved.
    let outcome_of = |r: Result<SgResult, CmdError>, len: u64| match r {
        Ok(r) => outcome(&r, len),
        Err(e) => Outcome {
            residual: len,
            ..e.outcome()
        },
    };
    let Some(split) = split else {
        let r = io(
            ctx,
            &ChunkIo {
                cdb,
                dir,
                iovs,
                len: total,
            },
        );
        return outcome_of(r, total);
    };
    let mut cur = Cursor { index: 0, off: 0 };
    let mut done = 0u64;
    for chunk in plan(split.rw, split.block_size, split.max_bytes) {
        debug_assert_eq!(chunk.byte_off, done);
        split
            .rw
            .chunk_cdb(cdb, chunk.lba, chunk.blocks, &mut scratch.cdb);
        scratch.iovs.clear();
        let len = take(iovs, &mut cur, chunk.bytes, &mut scratch.iovs);
        let r = io(
            ctx,
            &ChunkIo {
                cdb: &scratch.cdb,
                dir,
                iovs: &scratch.iovs,
                len,
            },
        );
        let mut o = outcome_of(r, len);
        done += len;
        if !o.is_good() || o.residual > 0 || len < chunk.bytes {
            o.residual += total - done;
            return o;
        }
    }
    let mut o = Outcome::good();
    o.residual = total - done;
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::cdb::RwKind;
    use crate::scsi::sense::status;

    fn iov(off: u64, len: u64) -> DataIov {
        DataIov { off, len }
    }

    #[test]
    fn take_splits_iovecs_at_chunk_boundaries() {
        let iovs = [iov(0, 3000), iov(10_000, 5000), iov(20_000, 192)];
        let mut cur = Cursor { index: 0, off: 0 };
        let mut out = Vec::new();
        assert_eq!(take(&iovs, &mut cur, 4096, &mut out), 4096);
        assert_eq!(out, vec![iov(0, 3000), iov(10_000, 1096)]);
        out.clear();
        assert_eq!(take(&iovs, &mut cur, 4096, &mut out), 4096);
        assert_eq!(out, vec![iov(11_096, 3904), iov(20_000, 192)]);
        out.clear();
        assert_eq!(take(&iovs, &mut cur, 4096, &mut out), 0);
    }

    struct Ctx {
        calls: Vec<(Vec<u8>, Vec<DataIov>)>,
        fail_at: Option<usize>,
    }

    fn rw(lba: u64, blocks: u32) -> RwCdb {
        RwCdb {
            kind: RwKind::Read,
            size: 10,
            lba,
            blocks,
            protect: 0,
        }
    }

    #[test]
    fn chunks_run_in_order_and_stop_at_first_failure() {
        let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        let r = rw(0, 24);
        let iovs = [iov(0, 24 * 512)];
        let mut ctx = Ctx {
            calls: Vec::new(),
            fail_at: Some(1),
        };
        let mut s = Scratch::default();
        let split = Split {
            rw: &r,
            block_size: 512,
            max_bytes: 4096,
        };
        let o = run(
            &cdb,
            Direction::FromDevice,
            &iovs,
            Some(split),
            &mut s,
            &mut ctx,
            |c, io| {
                c.calls.push((io.cdb.to_vec(), io.iovs.to_vec()));
                if c.fail_at == Some(c.calls.len() - 1) {
                    let mut r = SgResult::check_condition(&crate::scsi::sense::fixed_sense(
                        crate::scsi::sense::code::READ_ERROR,
                    ));
                    r.resid = 1024;
                    Ok(r)
                } else {
                    Ok(SgResult::good())
                }
            },
        );
        assert_eq!(ctx.calls.len(), 2, "the third chunk is never sent");
        assert_eq!(ctx.calls[1].0[2..6], [0, 0, 0, 8]);
        assert_eq!(ctx.calls[1].1, vec![iov(4096, 4096)]);
        assert_eq!(o.status, status::CHECK_CONDITION);
        // 1024 of the failed chunk plus the 4096 never attempted.
        assert_eq!(o.residual, 1024 + 4096);
    }

    #[test]
    fn a_short_good_chunk_ends_the_command_with_its_residual() {
        let cdb = [0x28, 0, 0, 0, 0, 0, 0, 0, 16, 0];
        let r = rw(0, 16);
        let iovs = [iov(0, 8192)];
        let mut s = Scratch::default();
        let mut n = 0;
        let split = Split {
            rw: &r,
            block_size: 512,
            max_bytes: 4096,
        };
        let o = run(
            &cdb,
            Direction::FromDevice,
            &iovs,
            Some(split),
            &mut s,
            &mut n,
            |n, _| {
                *n += 1;
                let mut r = SgResult::good();
                r.resid = 512;
                Ok(r)
            },
        );
        assert_eq!(n, 1);
        assert!(o.is_good());
        assert_eq!(o.residual, 512 + 4096);
    }

    #[test]
    fn whole_commands_are_one_call_with_the_original_cdb() {
        let cdb = [0x12, 0, 0, 0, 96, 0];
        let iovs = [iov(0, 96)];
        let mut s = Scratch::default();
        let mut seen = Vec::new();
        let o = run(
            &cdb,
            Direction::FromDevice,
            &iovs,
            None,
            &mut s,
            &mut seen,
            |v, io| {
                v.push((io.cdb.to_vec(), io.len));
                Ok(SgResult::good())
            },
        );
        assert!(o.is_good());
        assert_eq!(seen, vec![(cdb.to_vec(), 96)]);
    }

    #[test]
    fn a_declined_chunk_ends_the_command_with_the_errors_status() {
        let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 24, 0];
        let r = RwCdb {
            kind: RwKind::Write,
            ..rw(0, 24)
        };
        let iovs = [iov(0, 24 * 512)];
        let mut s = Scratch::default();
        let mut sent = 0;
        let split = Split {
            rw: &r,
            block_size: 512,
            max_bytes: 4096,
        };
        // The second chunk is declined: nothing of it or after it is sent.
        let o = run(
            &cdb,
            Direction::ToDevice,
            &iovs,
            Some(split),
            &mut s,
            &mut sent,
            |n, _| {
                if *n == 1 {
                    return Err(CmdError::Expired {
                        waited: std::time::Duration::from_secs(9),
                    });
                }
                *n += 1;
                Ok(SgResult::good())
            },
        );
        assert_eq!(sent, 1);
        assert_eq!(o.status, status::BUSY);
        assert_eq!(o.residual, 2 * 4096);
    }
}
