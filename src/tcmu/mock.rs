//! A mock of the kernel side of a TCMU ring (target_core_user.c, 6.1), so the
//! ring engine and the passthrough path are tested without a kernel.
//!
//! It lays entries out exactly as `tcmu_queue_cmd_ring` does: entry size
//! `max(offsetof(iov[n]), 112) + round_up(cdb_len, 8)`, the CDB right after
//! the base entry with `cdb_off` relative to the mapping, a PAD entry when the
//! space to the ring's end is too small, iovecs as offsets into the data area
//! (one per run of consecutive 4 KiB data blocks), cmd ids as `xa_alloc`
//! hands them out (the lowest free one in 1..=0xffff, so a just-freed id is
//! reused at once), and free-space accounting against the last cleaned
//! position. Completions are consumed as `tcmu_handle_completions` does:
//! from the last cleaned position to `cmd_tail`, PAD and TMR skipped, and
//! an unknown cmd_id breaks the ring. The configfs actions `block_dev` and
//! `reset_ring` behave as `tcmu_block_dev` and `tcmu_reset_ring`.
//!
//! It keeps a clock of its own, moved on by the test (`advance`): with a
//! `cmd_time_out` set, a command queued at `t` is failed back to the
//! initiator at `t + cmd_time_out` as `tcmu_check_expired_ring_cmd` does
//! (the earliest the kernel can; it rounds up), and its entry stays in the
//! ring; its completion by the handler is then taken quietly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::expiry::Stamp;

use super::abi::*;
use super::mapping::Mapping;

pub const DATA_BLOCK: u64 = 4096;

/// Direction and payload of a mock command.
#[derive(Debug, Clone)]
pub enum MockData {
    None,
    /// Data-out: the bytes are scattered into the data area.
    Out(Vec<u8>),
    /// Data-in of this many bytes.
    In(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub cmd_id: u16,
    /// Offset of the entry within the mapping.
    pub entry_off: u64,
    pub entry_len: usize,
}

/// One command as the kernel completed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    pub cmd_id: u16,
    pub status: u8,
    pub sense: Vec<u8>,
    pub uflags: u8,
    pub read_len: u32,
    /// Data-in gathered from the data area (read_len honoured as the kernel does).
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MockError {
    #[error("command ring full")]
    RingFull,
    #[error("data area full")]
    DataFull,
    #[error("ring is broken")]
    Broken,
    #[error("device is blocked (action/block_dev)")]
    Blocked,
}

#[derive(Debug)]
struct MockCmd {
    blocks: Vec<u64>,
    iovs: Vec<(u64, u64)>,
    data_in: u64,
    /// When LIO fails it back (None: cmd_time_out 0).
    deadline: Option<Stamp>,
    /// Failed back already: the initiator was told.
    expired: bool,
}

pub struct MockKernel {
    map: Arc<Mapping>,
    flags: u16,
    cmdr_off: usize,
    cmdr_size: usize,
    data_off: u64,
    free_blocks: Vec<u64>,
    commands: BTreeMap<u16, MockCmd>,
    /// `Some(id)`: ids handed out cyclically from `id` (to exercise high
    /// ids); `None`: the lowest free id, as the kernel does.
    next_id: Option<u16>,
    last_cleaned: usize,
    broken: bool,
    blocked: bool,
    /// Completions the kernel saw, in the order it processed them.
    pub completed: Vec<Completed>,
    /// PAD entries written so far.
    pub pads: usize,
    /// The mock's clock and LIO's cmd_time_out (zero: never).
    clock: Stamp,
    cmd_time_out: Duration,
    /// Commands failed back to the initiator when their time ran out, and
    /// when.
    pub failed_back: Vec<(u16, Stamp)>,
    /// Completions of commands already failed back (taken quietly).
    pub late: Vec<Completed>,
}

impl MockKernel {
    /// A ring of `ring_size` bytes (mailbox included) followed by
    /// `data_blocks` 4 KiB data blocks; `flags` are the mailbox capabilities.
    pub fn new(ring_size: usize, data_blocks: u64, flags: u16) -> Self {
        assert!(ring_size.is_multiple_of(4096) && ring_size > MAILBOX_SIZE + CMD_ENTRY_SIZE);
        let len = ring_size + (data_blocks * DATA_BLOCK) as usize;
        let map = Arc::new(Mapping::anonymous(len).expect("anonymous mapping"));
        let cmdr_off = MAILBOX_SIZE;
        let cmdr_size = ring_size - MAILBOX_SIZE;
        map.write_u16(MB_VERSION as u64, MAILBOX_VERSION).unwrap();
        map.write_u16(MB_FLAGS as u64, flags).unwrap();
        map.write_u32(MB_CMDR_OFF as u64, cmdr_off as u32).unwrap();
        map.write_u32(MB_CMDR_SIZE as u64, cmdr_size as u32)
            .unwrap();
        // Blocks are handed out lowest first, like the kernel's bitmap.
        let free_blocks = (0..data_blocks).rev().collect();
        MockKernel {
            map,
            flags,
            cmdr_off,
            cmdr_size,
            data_off: ring_size as u64,
            free_blocks,
            commands: BTreeMap::new(),
            next_id: None,
            last_cleaned: 0,
            broken: false,
            blocked: false,
            completed: Vec::new(),
            pads: 0,
            clock: Stamp::from_nanos(1 << 40),
            cmd_time_out: Duration::ZERO,
            failed_back: Vec::new(),
            late: Vec::new(),
        }
    }

    /// The mock's clock.
    pub fn now(&self) -> Stamp {
        self.clock
    }

    /// LIO's `cmd_time_out` for commands queued from now on.
    pub fn set_cmd_time_out(&mut self, t: Duration) {
        self.cmd_time_out = t;
    }

    /// Moves the clock on; commands whose time ran out are failed back.
    pub fn advance(&mut self, d: Duration) {
        self.clock += d;
        for (id, c) in self.commands.iter_mut() {
            if !c.expired && c.deadline.is_some_and(|t| t <= self.clock) {
                c.expired = true;
                self.failed_back.push((*id, self.clock));
            }
        }
    }

    /// Whether command `cmd_id` (outstanding) was failed back already.
    pub fn expired(&self, cmd_id: u16) -> bool {
        self.commands.get(&cmd_id).is_some_and(|c| c.expired)
    }

    /// When LIO fails command `cmd_id` back unless it completes first.
    pub fn deadline(&self, cmd_id: u16) -> Option<Stamp> {
        self.commands.get(&cmd_id).and_then(|c| c.deadline)
    }

    pub fn mapping(&self) -> Arc<Mapping> {
        self.map.clone()
    }

    pub fn flags(&self) -> u16 {
        self.flags
    }

    pub fn data_off(&self) -> u64 {
        self.data_off
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn inflight(&self) -> usize {
        self.commands.len()
    }

    fn head(&self) -> usize {
        self.map.read_u32(MB_CMD_HEAD as u64).unwrap() as usize
    }

    fn set_head(&self, h: usize) {
        self.map
            .store_release_u32(MB_CMD_HEAD as u64, h as u32)
            .unwrap();
    }

    fn space_free(&self, head: usize) -> usize {
        let used = (head + self.cmdr_size - self.last_cleaned) % self.cmdr_size;
        self.cmdr_size - used - 1
    }

    fn alloc_id(&mut self) -> u16 {
        let Some(next) = self.next_id else {
            return (1..=0xffff)
                .find(|id| !self.commands.contains_key(id))
                .expect("a free id");
        };
        let mut id = next;
        while self.commands.contains_key(&id) {
            id = if id == 0xffff { 1 } else { id + 1 };
        }
        self.next_id = Some(if id == 0xffff { 1 } else { id + 1 });
        id
    }

    /// Hands out ids cyclically from `id` instead of the lowest free one
    /// (not what the kernel does; to exercise ids near 0xffff).
    pub fn set_next_id(&mut self, id: u16) {
        self.next_id = Some(id.max(1));
    }

    /// `action/block_dev`: blocking first completes what the handler
    /// published, then refuses new commands until unblocked.
    pub fn block_dev(&mut self, on: bool) {
        if on && !self.blocked {
            let _ = self.handle_completions();
        }
        self.blocked = on;
    }

    /// `action/reset_ring` with 1: every outstanding command completes with
    /// BUSY (2: CHECK CONDITION) without its data, head and tail go to 0,
    /// and a broken ring is usable again.
    pub fn reset_ring(&mut self, level: u8) {
        let status = if level == 1 { 0x08 } else { 0x02 };
        for (id, cmd) in std::mem::take(&mut self.commands) {
            self.free_blocks.extend(cmd.blocks.iter().rev());
            if cmd.expired {
                continue;
            }
            self.completed.push(Completed {
                cmd_id: id,
                status,
                sense: Vec::new(),
                uflags: 0,
                read_len: 0,
                data: Vec::new(),
            });
        }
        self.last_cleaned = 0;
        self.set_head(0);
        self.map
            .store_release_u32(MB_CMD_TAIL as u64, 0)
            .expect("tail is in the mailbox");
        self.broken = false;
    }

    /// Queues a SCSI command as `tcmu_queue_cmd_ring` would.
    pub fn queue_cmd(&mut self, cdb: &[u8], data: MockData) -> Result<Queued, MockError> {
        if self.blocked {
            return Err(MockError::Blocked);
        }
        if self.broken {
            return Err(MockError::Broken);
        }
        let len = match &data {
            MockData::None => 0,
            MockData::Out(v) => v.len() as u64,
            MockData::In(n) => *n,
        };
        let nblocks = len.div_ceil(DATA_BLOCK);
        if nblocks as usize > self.free_blocks.len() {
            return Err(MockError::DataFull);
        }
        // Count the iovecs the blocks will need before taking them.
        let mut probe: Vec<u64> = self.free_blocks.clone();
        let blocks: Vec<u64> = (0..nblocks).map(|_| probe.pop().unwrap()).collect();
        let mut iovs: Vec<(u64, u64)> = Vec::new();
        let mut left = len;
        for (i, b) in blocks.iter().enumerate() {
            let n = left.min(DATA_BLOCK);
            let base = self.data_off + b * DATA_BLOCK;
            match iovs.last_mut() {
                Some(last) if i > 0 && blocks[i - 1] + 1 == *b => last.1 += n,
                _ => iovs.push((base, n)),
            }
            left -= n;
        }
        let size = cmd_size(iovs.len(), cdb.len());
        let mut head = self.head();
        let to_end = self.cmdr_size - head;
        let need = if to_end < size { size + to_end } else { size };
        if self.space_free(head) < need {
            return Err(MockError::RingFull);
        }
        if to_end < size {
            let pad = (self.cmdr_off + head) as u64;
            self.map
                .write_u32(pad + HDR_LEN_OP as u64, to_end as u32 | OP_PAD)
                .unwrap();
            self.map.write_u16(pad + HDR_CMD_ID as u64, 0).unwrap();
            self.map.write_u16(pad + HDR_KFLAGS as u64, 0).unwrap();
            head = 0;
            self.set_head(0);
            self.pads += 1;
        }
        self.free_blocks = probe;
        let id = self.alloc_id();
        let entry = (self.cmdr_off + head) as u64;
        self.map.fill(entry, size as u64, 0).unwrap();
        self.map
            .write_u32(entry + HDR_LEN_OP as u64, size as u32 | OP_CMD)
            .unwrap();
        self.map
            .write_u32(entry + REQ_IOV_CNT as u64, iovs.len() as u32)
            .unwrap();
        for (i, (base, n)) in iovs.iter().enumerate() {
            let at = entry + (REQ_IOV + i * IOVEC_SIZE) as u64;
            self.map.write_u64(at, *base).unwrap();
            self.map.write_u64(at + 8, *n).unwrap();
        }
        if let MockData::Out(bytes) = &data {
            let mut done = 0usize;
            for (base, n) in &iovs {
                self.map
                    .write_bytes(*base, &bytes[done..done + *n as usize])
                    .unwrap();
                done += *n as usize;
            }
        }
        self.map.write_u16(entry + HDR_CMD_ID as u64, id).unwrap();
        let cdb_off = entry + base_cmd_size(iovs.len()) as u64;
        self.map.write_bytes(cdb_off, cdb).unwrap();
        self.map
            .write_u64(entry + REQ_CDB_OFF as u64, cdb_off)
            .unwrap();
        let data_in = if let MockData::In(n) = data { n } else { 0 };
        let deadline = (!self.cmd_time_out.is_zero()).then(|| self.clock + self.cmd_time_out);
        self.commands.insert(
            id,
            MockCmd {
                blocks,
                iovs,
                data_in,
                deadline,
                expired: false,
            },
        );
        self.set_head((head + size) % self.cmdr_size);
        Ok(Queued {
            cmd_id: id,
            entry_off: entry,
            entry_len: size,
        })
    }

    /// Queues a TMR notification (`queue_tmr_ring`).
    pub fn queue_tmr(&mut self, tmr_type: u8, cmd_ids: &[u16]) -> Result<(), MockError> {
        let size = (TMR_CMD_IDS + 2 * cmd_ids.len()).div_ceil(OP_ALIGN) * OP_ALIGN;
        let mut head = self.head();
        let to_end = self.cmdr_size - head;
        let need = if to_end < size { size + to_end } else { size };
        if self.space_free(head) < need {
            return Err(MockError::RingFull);
        }
        if to_end < size {
            let pad = (self.cmdr_off + head) as u64;
            self.map.write_u32(pad, to_end as u32 | OP_PAD).unwrap();
            head = 0;
            self.pads += 1;
        }
        let entry = (self.cmdr_off + head) as u64;
        self.map.fill(entry, size as u64, 0).unwrap();
        self.map.write_u32(entry, size as u32 | OP_TMR).unwrap();
        self.map
            .write_u8(entry + TMR_TYPE as u64, tmr_type)
            .unwrap();
        self.map
            .write_u32(entry + TMR_CMD_CNT as u64, cmd_ids.len() as u32)
            .unwrap();
        for (i, id) in cmd_ids.iter().enumerate() {
            self.map
                .write_u16(entry + (TMR_CMD_IDS + 2 * i) as u64, *id)
                .unwrap();
        }
        self.set_head((head + size) % self.cmdr_size);
        Ok(())
    }

    /// `tcmu_handle_completions`: consumes entries from the last cleaned
    /// position to `cmd_tail`. Returns how many commands completed.
    pub fn handle_completions(&mut self) -> Result<usize, MockError> {
        if self.broken {
            return Err(MockError::Broken);
        }
        let tail = self.map.load_acquire_u32(MB_CMD_TAIL as u64).unwrap() as usize;
        let mut n = 0;
        while self.last_cleaned != tail {
            let e = (self.cmdr_off + self.last_cleaned) as u64;
            let len_op = self.map.read_u32(e).unwrap();
            let len = (len_op & !OP_MASK) as usize;
            let op = len_op & OP_MASK;
            if op == OP_PAD || op == OP_TMR {
                self.last_cleaned = (self.last_cleaned + len) % self.cmdr_size;
                continue;
            }
            let id = self.map.read_u16(e + HDR_CMD_ID as u64).unwrap();
            let Some(cmd) = self.commands.remove(&id) else {
                self.broken = true;
                return Err(MockError::Broken);
            };
            let status = self.map.read_u8(e + RSP_SCSI_STATUS as u64).unwrap();
            let uflags = self.map.read_u8(e + HDR_UFLAGS as u64).unwrap();
            let read_len = self.map.read_u32(e + RSP_READ_LEN as u64).unwrap();
            let mut sense = Vec::new();
            if status == 0x02 {
                sense = vec![0u8; SENSE_BUFFERSIZE];
                self.map
                    .read_bytes(e + RSP_SENSE as u64, &mut sense)
                    .unwrap();
            }
            // As tcmu_handle_completion: read_len counts only when given and
            // not 0; with CHECK CONDITION the data is gathered only then.
            let read_len_valid = uflags & UFLAG_READ_LEN != 0 && read_len != 0;
            let mut want = cmd.data_in;
            if read_len_valid && (read_len as u64) < want {
                want = read_len as u64;
            }
            let mut data = Vec::new();
            if cmd.data_in > 0 && (status != 0x02 || read_len_valid) {
                for (base, l) in &cmd.iovs {
                    let take = (*l).min(want - data.len() as u64);
                    let mut buf = vec![0u8; take as usize];
                    self.map.read_bytes(*base, &mut buf).unwrap();
                    data.extend_from_slice(&buf);
                    if data.len() as u64 == want {
                        break;
                    }
                }
            }
            self.free_blocks.extend(cmd.blocks.iter().rev());
            let done = Completed {
                cmd_id: id,
                status,
                sense,
                uflags,
                read_len,
                data,
            };
            if cmd.expired {
                self.late.push(done);
            } else {
                self.completed.push(done);
            }
            n += 1;
            self.last_cleaned = (self.last_cleaned + len) % self.cmdr_size;
        }
        Ok(n)
    }

    /// The iovecs the mock gave a command (offsets into the mapping).
    pub fn iovs(&self, cmd_id: u16) -> Option<Vec<(u64, u64)>> {
        self.commands.get(&cmd_id).map(|c| c.iovs.clone())
    }

    /// Keeps only every `keep_every`-th free data block, so later commands
    /// get fragmented iovecs (one per block).
    pub fn fragment(&mut self, keep_every: u64) {
        let mut i = 0u64;
        self.free_blocks.retain(|_| {
            i += 1;
            i.is_multiple_of(keep_every)
        });
    }
}

impl super::ring::RingActions for MockKernel {
    fn block(&mut self, on: bool) -> Result<(), String> {
        self.block_dev(on);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), String> {
        self.reset_ring(1);
        Ok(())
    }
}
