//! The TCMU command ring: a bounded walk over the entries the kernel
//! published, and the completion writer.
//!
//! Everything the kernel wrote is copied out and checked against the mapping
//! before use: the CDB and the iovec list of a command are copied when the
//! entry is read (with out-of-order completion the entry's memory is reused
//! for another command's response), and every iovec must lie inside the data
//! area.

use std::collections::VecDeque;
use std::sync::Arc;

use super::abi::*;
use super::mapping::{Mapping, OutOfBounds};
use crate::expiry::Stamp;

/// The longest CDB the ring can carry (variable-length CDBs, SPC-4 4.2.3).
pub const MAX_CDB_LEN: usize = 260;

/// Why the ring or an entry in it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("mailbox version {0}, expected {MAILBOX_VERSION}")]
    Version(u16),
    #[error(
        "mailbox describes a command ring at {off:#x}+{size:#x} outside the {map:#x}-byte mapping"
    )]
    Geometry { off: u32, size: u32, map: usize },
    #[error("cmd_head {0:#x} is outside the command ring")]
    Head(u32),
    #[error("entry at {off:#x} has length {len}, which does not fit the ring")]
    EntryLen { off: usize, len: usize },
    #[error("cmd_id {0} appears twice among outstanding commands")]
    DuplicateId(u16),
    #[error(
        "the ring holds entries a previous handler left (tail {tail:#x}, head {head:#x}); \
         some may be completed already, so they are not read: reset the ring first"
    )]
    Stale { tail: u32, head: u32 },
    #[error(transparent)]
    Bounds(#[from] OutOfBounds),
}

/// Why one command cannot be executed (it is still completed, with sense).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCommand {
    #[error("cdb_off {0:#x} is outside the command entry")]
    CdbOffset(u64),
    #[error("CDB opcode {0:#04x} has an invalid length")]
    CdbLen(u8),
    #[error("iov_cnt {iov_cnt} + iov_bidi_cnt {bidi} does not fit the entry")]
    IovCount { iov_cnt: u32, bidi: u32 },
    #[error("iovec {index} ({base:#x}+{len:#x}) is outside the data area")]
    Iovec { index: usize, base: u64, len: u64 },
}

/// One span of command data inside the data area, as an offset into the
/// mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIov {
    pub off: u64,
    pub len: u64,
}

/// A command copied out of the ring. Its buffers are reused: give spent
/// requests back to `Ring::poll_recycling` so the steady state allocates
/// nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CmdRequest {
    pub cmd_id: u16,
    pub cdb: Vec<u8>,
    /// Data-out or data-in iovecs (`iov_cnt` of them).
    pub iovs: Vec<DataIov>,
    /// Data-in iovecs of a bidirectional command.
    pub bidi_iovs: Vec<DataIov>,
    pub dif_cnt: u32,
    /// When the ring read before the one that found this command looked at
    /// `cmd_head`: the command was published after that, so LIO's deadline
    /// for it is no earlier than this plus `cmd_time_out` (see
    /// `crate::expiry`). Set by the ring.
    pub seen_after: Option<crate::expiry::Stamp>,
    /// When the handler read it (set by the handler, for its latency
    /// figures; the ring leaves it alone).
    pub read_at: Option<std::time::Instant>,
}

impl CmdRequest {
    pub fn data_len(&self) -> u64 {
        self.iovs.iter().map(|v| v.len).sum()
    }
}

/// A ring entry as seen by the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A command to execute.
    Cmd(CmdRequest),
    /// A command entry whose contents failed the checks; complete it with
    /// CHECK CONDITION without touching its data.
    BadCmd { cmd_id: u16, why: BadCommand },
    /// A task management notification (informational).
    Tmr {
        tmr_type: TmrType,
        cmd_ids: Vec<u16>,
    },
    /// An entry of an opcode this handler does not know; it is completed
    /// with `TCMU_UFLAG_UNKNOWN_OP`.
    Unknown { cmd_id: u16, op: u32 },
}

/// What the initiator is told about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub cmd_id: u16,
    pub scsi_status: u8,
    /// Sense bytes, sent only with CHECK CONDITION.
    pub sense: [u8; SENSE_BUFFERSIZE],
    /// Bytes actually read, for a data-in command that transferred less.
    pub read_len: Option<u32>,
    /// Set `TCMU_UFLAG_UNKNOWN_OP`.
    pub unknown_op: bool,
}

impl Completion {
    pub fn good(cmd_id: u16) -> Self {
        Completion {
            cmd_id,
            scsi_status: 0,
            sense: [0; SENSE_BUFFERSIZE],
            read_len: None,
            unknown_op: false,
        }
    }
}

/// Why a completion was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    #[error("cmd_id {0} is not outstanding (double or stale completion refused)")]
    NotOutstanding(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// PAD or TMR: the kernel skips it.
    Skip,
    /// A CMD or unknown-op entry: holds one completion.
    Cmd(u16),
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    off: usize,
    len: usize,
    kind: SlotKind,
}

/// The mapped ring of one device.
pub struct Ring {
    map: Arc<Mapping>,
    cmdr_off: usize,
    cmdr_size: usize,
    data_off: u64,
    flags: u16,
    /// Next entry to read (offset within the command ring).
    cursor: usize,
    /// Our copy of cmd_tail.
    tail: usize,
    /// When the last read (or the validation of the empty ring) loaded
    /// `cmd_head`: every entry found later was published after it.
    last_scan: Stamp,
    /// Entries read and not yet passed by the tail, in ring order.
    slots: VecDeque<Slot>,
    /// Commands read and not yet completed.
    outstanding: Box<[u64; 1024]>,
    n_outstanding: usize,
    /// In-order mode: completions waiting for the slots before them.
    parked: Vec<Completion>,
    tail_dirty: bool,
}

impl Ring {
    /// Validates the mailbox of a freshly mapped device whose ring is
    /// empty (`cmd_tail` == `cmd_head`; see [`attach`]). Entries a previous
    /// handler left are never read: with out-of-order completion some of
    /// them are commands it already completed, and their ids may belong to
    /// new commands by now.
    pub fn new(map: Arc<Mapping>) -> Result<Self, RingError> {
        Self::new_at(map, Stamp::now())
    }

    /// As `new`, with `now` taken before the ring is looked at (a clock of
    /// the caller's: the mock kernel's, in tests).
    pub fn new_at(map: Arc<Mapping>, now: Stamp) -> Result<Self, RingError> {
        let version = map.read_u16(MB_VERSION as u64)?;
        if version != MAILBOX_VERSION {
            return Err(RingError::Version(version));
        }
        let flags = map.read_u16(MB_FLAGS as u64)?;
        let off = map.read_u32(MB_CMDR_OFF as u64)?;
        let size = map.read_u32(MB_CMDR_SIZE as u64)?;
        let geo = RingError::Geometry {
            off,
            size,
            map: map.len(),
        };
        let end = off as u64 + size as u64;
        if (off as usize) < MAILBOX_SIZE
            || size < CMD_ENTRY_SIZE as u32
            || !(size as usize).is_multiple_of(OP_ALIGN)
            || !(off as usize).is_multiple_of(OP_ALIGN)
            || end > map.len() as u64
        {
            return Err(geo);
        }
        let tail = map.load_acquire_u32(MB_CMD_TAIL as u64)? as usize;
        if tail >= size as usize || !tail.is_multiple_of(OP_ALIGN) {
            return Err(RingError::Head(tail as u32));
        }
        let head = map.load_acquire_u32(MB_CMD_HEAD as u64)?;
        if head as usize != tail {
            return Err(RingError::Stale {
                tail: tail as u32,
                head,
            });
        }
        Ok(Ring {
            map,
            cmdr_off: off as usize,
            cmdr_size: size as usize,
            data_off: end,
            flags,
            cursor: tail,
            tail,
            last_scan: now,
            slots: VecDeque::new(),
            outstanding: Box::new([0; 1024]),
            n_outstanding: 0,
            parked: Vec::new(),
            tail_dirty: false,
        })
    }

    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.map
    }

    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Completes in ring order even if the kernel accepts out-of-order
    /// completions (the `--in-order` lever). Only before any command is
    /// read: it changes how the tail advances.
    pub fn force_in_order(&mut self) {
        assert!(self.slots.is_empty(), "force_in_order on a ring in use");
        self.flags &= !MAILBOX_FLAG_CAP_OOOC;
    }

    pub fn ooo_completion(&self) -> bool {
        self.flags & MAILBOX_FLAG_CAP_OOOC != 0
    }

    pub fn read_len_supported(&self) -> bool {
        self.flags & MAILBOX_FLAG_CAP_READ_LEN != 0
    }

    /// Start of the data area within the mapping.
    pub fn data_off(&self) -> u64 {
        self.data_off
    }

    pub fn outstanding(&self) -> usize {
        self.n_outstanding
    }

    fn is_outstanding(&self, id: u16) -> bool {
        self.outstanding[id as usize / 64] & (1 << (id % 64)) != 0
    }

    fn set_outstanding(&mut self, id: u16, on: bool) {
        let w = &mut self.outstanding[id as usize / 64];
        if on {
            *w |= 1 << (id % 64);
        } else {
            *w &= !(1 << (id % 64));
        }
    }

    /// Whether the kernel has published entries not read yet (one Acquire
    /// load; for polling loops).
    pub fn has_new(&self) -> bool {
        self.map
            .load_acquire_u32(MB_CMD_HEAD as u64)
            .is_ok_and(|h| h as usize != self.cursor)
    }

    /// Reads every entry the kernel published since the last call. The walk
    /// is bounded: it stops at `cmd_head` and each step must advance by a
    /// positive, aligned length that does not pass the head.
    pub fn poll(&mut self) -> Result<Vec<Entry>, RingError> {
        self.poll_at(Stamp::now())
    }

    /// As `poll`, with `now` taken before the call.
    pub fn poll_at(&mut self, now: Stamp) -> Result<Vec<Entry>, RingError> {
        let mut out = Vec::new();
        self.poll_recycling(now, &mut out, &mut Vec::new())?;
        Ok(out)
    }

    /// As `poll`, appending to `out` and filling commands from `spare`
    /// (spent requests whose buffers are reused) before allocating new
    /// ones. `now` must be taken before the call: the commands found in the
    /// next call get it as their `seen_after`.
    pub fn poll_recycling(
        &mut self,
        now: Stamp,
        out: &mut Vec<Entry>,
        spare: &mut Vec<CmdRequest>,
    ) -> Result<(), RingError> {
        let seen_after = std::mem::replace(&mut self.last_scan, now);
        let head = self.map.load_acquire_u32(MB_CMD_HEAD as u64)?;
        if head as usize >= self.cmdr_size || !(head as usize).is_multiple_of(OP_ALIGN) {
            return Err(RingError::Head(head));
        }
        let head = head as usize;
        let mut steps = 0usize;
        while self.cursor != head {
            steps += 1;
            if steps > self.cmdr_size / OP_ALIGN {
                return Err(RingError::EntryLen {
                    off: self.cursor,
                    len: 0,
                });
            }
            let off = self.cursor;
            let abs = (self.cmdr_off + off) as u64;
            let len_op = self.map.read_u32(abs + HDR_LEN_OP as u64)?;
            let op = len_op & OP_MASK;
            let len = (len_op & !OP_MASK) as usize;
            let to_head = (head + self.cmdr_size - off) % self.cmdr_size;
            if len == 0 || len > to_head || len > self.cmdr_size - off {
                return Err(RingError::EntryLen { off, len });
            }
            let cmd_id = self.map.read_u16(abs + HDR_CMD_ID as u64)?;
            let (kind, entry) = match op {
                OP_PAD => (SlotKind::Skip, None),
                OP_TMR => (SlotKind::Skip, Some(self.read_tmr(abs, len)?)),
                OP_CMD => (
                    SlotKind::Cmd(cmd_id),
                    Some(self.read_cmd(abs, len, cmd_id, seen_after, spare)?),
                ),
                _ => (SlotKind::Cmd(cmd_id), Some(Entry::Unknown { cmd_id, op })),
            };
            if let SlotKind::Cmd(id) = kind {
                if self.is_outstanding(id) {
                    // The kernel never reuses an id still in flight; a ring
                    // that says otherwise is not one to complete into.
                    return Err(RingError::DuplicateId(id));
                }
                self.set_outstanding(id, true);
                self.n_outstanding += 1;
            }
            self.slots.push_back(Slot { off, len, kind });
            if let Some(e) = entry {
                out.push(e);
            }
            self.cursor = (off + len) % self.cmdr_size;
        }
        // Let the kernel reclaim leading PAD/TMR entries right away.
        self.retire_skips();
        Ok(())
    }

    fn read_tmr(&self, abs: u64, len: usize) -> Result<Entry, RingError> {
        let tmr_type = TmrType::from(self.map.read_u8(abs + TMR_TYPE as u64)?);
        let cnt = self.map.read_u32(abs + TMR_CMD_CNT as u64)? as usize;
        let fits = len.saturating_sub(TMR_CMD_IDS) / 2;
        let mut cmd_ids = Vec::with_capacity(cnt.min(fits));
        for i in 0..cnt.min(fits) {
            cmd_ids.push(self.map.read_u16(abs + (TMR_CMD_IDS + 2 * i) as u64)?);
        }
        Ok(Entry::Tmr { tmr_type, cmd_ids })
    }

    fn read_cmd(
        &self,
        abs: u64,
        len: usize,
        cmd_id: u16,
        seen_after: Stamp,
        spare: &mut Vec<CmdRequest>,
    ) -> Result<Entry, RingError> {
        let mut c = spare.pop().unwrap_or_default();
        match self.parse_cmd(abs, len, cmd_id, &mut c) {
            Ok(()) => {
                c.seen_after = Some(seen_after);
                Ok(Entry::Cmd(c))
            }
            Err(r) => {
                spare.push(c);
                match r {
                    Ok(why) => Ok(Entry::BadCmd { cmd_id, why }),
                    Err(e) => Err(e),
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn parse_cmd(
        &self,
        abs: u64,
        len: usize,
        cmd_id: u16,
        c: &mut CmdRequest,
    ) -> Result<(), Result<BadCommand, RingError>> {
        let m = &self.map;
        let rd32 = |o: usize| m.read_u32(abs + o as u64).map_err(|e| Err(e.into()));
        let iov_cnt = rd32(REQ_IOV_CNT)?;
        let bidi = rd32(REQ_IOV_BIDI_CNT)?;
        let dif_cnt = rd32(REQ_IOV_DIF_CNT)?;
        let cdb_off = m
            .read_u64(abs + REQ_CDB_OFF as u64)
            .map_err(|e| Err(e.into()))?;
        let total = iov_cnt as u64 + bidi as u64;
        // The iovec array has to end inside the entry, before the CDB.
        if REQ_IOV as u64 + total * IOVEC_SIZE as u64 > len as u64 {
            return Err(Ok(BadCommand::IovCount { iov_cnt, bidi }));
        }
        // The CDB lies inside this entry, after the iovecs.
        let entry_end = abs + len as u64;
        let iov_end = abs + REQ_IOV as u64 + total * IOVEC_SIZE as u64;
        if cdb_off < iov_end.max(abs + HDR_SIZE as u64) || cdb_off >= entry_end {
            return Err(Ok(BadCommand::CdbOffset(cdb_off)));
        }
        let room = (entry_end - cdb_off) as usize;
        let opcode = m.read_u8(cdb_off).map_err(|e| Err(e.into()))?;
        let cdb_len = cdb_length(m, cdb_off, room).ok_or(Ok(BadCommand::CdbLen(opcode)))?;
        c.cdb.clear();
        c.cdb.resize(cdb_len, 0);
        m.read_bytes(cdb_off, &mut c.cdb)
            .map_err(|e| Err(e.into()))?;
        c.iovs.clear();
        c.bidi_iovs.clear();
        for i in 0..total as usize {
            let at = abs + (REQ_IOV + i * IOVEC_SIZE) as u64;
            let base = m.read_u64(at).map_err(|e| Err(e.into()))?;
            let ilen = m.read_u64(at + 8).map_err(|e| Err(e.into()))?;
            let bad = BadCommand::Iovec {
                index: i,
                base,
                len: ilen,
            };
            if base < self.data_off || m.check(base, ilen).is_err() {
                return Err(Ok(bad));
            }
            let v = DataIov {
                off: base,
                len: ilen,
            };
            if i < iov_cnt as usize {
                c.iovs.push(v);
            } else {
                c.bidi_iovs.push(v);
            }
        }
        c.cmd_id = cmd_id;
        c.dif_cnt = dif_cnt;
        Ok(())
    }

    /// Queues a completion. With out-of-order completion it goes into the
    /// next slot at the tail at once; otherwise it waits for the commands
    /// before it. Nothing reaches the kernel before `flush`.
    pub fn complete(&mut self, c: Completion) -> Result<(), CompleteError> {
        if !self.is_outstanding(c.cmd_id) || self.parked.iter().any(|p| p.cmd_id == c.cmd_id) {
            return Err(CompleteError::NotOutstanding(c.cmd_id));
        }
        if self.ooo_completion() {
            self.retire_skips();
            let slot = self
                .slots
                .pop_front()
                .expect("an outstanding command has a slot at or after the tail");
            self.write_completion(slot, &c);
        } else {
            self.parked.push(c);
            loop {
                self.retire_skips();
                let Some(&Slot {
                    kind: SlotKind::Cmd(id),
                    ..
                }) = self.slots.front()
                else {
                    break;
                };
                let Some(i) = self.parked.iter().position(|p| p.cmd_id == id) else {
                    break;
                };
                let c = self.parked.swap_remove(i);
                let slot = self.slots.pop_front().expect("front exists");
                self.write_completion(slot, &c);
            }
        }
        Ok(())
    }

    fn retire_skips(&mut self) {
        while let Some(s) = self.slots.front() {
            if s.kind != SlotKind::Skip {
                break;
            }
            self.tail = (s.off + s.len) % self.cmdr_size;
            self.tail_dirty = true;
            self.slots.pop_front();
        }
    }

    fn write_completion(&mut self, slot: Slot, c: &Completion) {
        let abs = (self.cmdr_off + slot.off) as u64;
        let m = &self.map;
        let mut uflags = 0u8;
        if c.unknown_op {
            uflags |= UFLAG_UNKNOWN_OP;
        }
        let read_len = match c.read_len {
            Some(n) if self.read_len_supported() => {
                uflags |= UFLAG_READ_LEN;
                n
            }
            _ => 0,
        };
        // The slot was validated when it was read: its 112-byte header and
        // response area lie inside the ring (len >= 112 is not guaranteed for
        // a hostile unknown-op entry, so write only what the slot holds).
        let writable = slot.len.min(CMD_ENTRY_SIZE);
        let mut buf = [0u8; CMD_ENTRY_SIZE];
        buf[0..4].copy_from_slice(&((slot.len as u32) | OP_CMD).to_ne_bytes());
        buf[HDR_CMD_ID..HDR_CMD_ID + 2].copy_from_slice(&c.cmd_id.to_ne_bytes());
        buf[HDR_KFLAGS] = m.read_u8(abs + HDR_KFLAGS as u64).unwrap_or(0);
        buf[HDR_UFLAGS] = uflags;
        buf[RSP_SCSI_STATUS] = c.scsi_status;
        buf[RSP_READ_LEN..RSP_READ_LEN + 4].copy_from_slice(&read_len.to_ne_bytes());
        buf[RSP_SENSE..RSP_SENSE + SENSE_BUFFERSIZE].copy_from_slice(&c.sense);
        m.write_bytes(abs, &buf[..writable])
            .expect("slot was bounds-checked when read");
        self.set_outstanding(c.cmd_id, false);
        self.n_outstanding -= 1;
        self.tail = (slot.off + slot.len) % self.cmdr_size;
        self.tail_dirty = true;
    }

    /// Publishes the completions written so far by storing `cmd_tail`
    /// (Release). Returns true when the kernel must be told (one uio write
    /// per batch).
    pub fn flush(&mut self) -> bool {
        self.retire_skips();
        if !self.tail_dirty {
            return false;
        }
        self.tail_dirty = false;
        self.map
            .store_release_u32(MB_CMD_TAIL as u64, self.tail as u32)
            .expect("cmd_tail is inside the mailbox");
        true
    }
}

/// The kernel's per-device actions a handler uses when it attaches:
/// configfs `action/block_dev` and `action/reset_ring`.
pub trait RingActions {
    /// Blocks (true) or unblocks new commands. Blocking first completes
    /// whatever the previous handler published; commands that arrive while
    /// blocked get BUSY, and the initiator retries them.
    fn block(&mut self, on: bool) -> Result<(), String>;
    /// Completes every outstanding command with BUSY (the initiator retries
    /// it) and empties the ring.
    fn reset(&mut self) -> Result<(), String>;
}

/// Why a handler could not attach to a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    #[error("cannot reset the ring ({0}); not serving, so that no completed command runs again")]
    Action(String),
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Attaches to a device's ring as tcmu-runner does: block new commands,
/// reset the ring (what a previous handler left completes with BUSY, to be
/// retried), validate the empty ring, unblock. Nothing the handler did not
/// see queued while alive is ever read.
pub fn attach(map: Arc<Mapping>, act: &mut dyn RingActions) -> Result<Ring, AttachError> {
    act.block(true).map_err(AttachError::Action)?;
    let ring = act
        .reset()
        .map_err(AttachError::Action)
        .and_then(|()| Ok(Ring::new(map)?));
    let unblocked = act.block(false).map_err(AttachError::Action);
    let ring = ring?;
    unblocked?;
    Ok(ring)
}

/// Length of the CDB at `off`, from its opcode group (and, for 0x7E/0x7F,
/// its additional length byte), if it fits in `room` bytes.
fn cdb_length(m: &Mapping, off: u64, room: usize) -> Option<usize> {
    let opcode = m.read_u8(off).ok()?;
    let len = match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        // VARIABLE LENGTH: 8 bytes plus the additional CDB length.
        3 if opcode == 0x7f => {
            if room < 8 {
                return None;
            }
            8 + m.read_u8(off + 7).ok()? as usize
        }
        3 => 12,
        // Groups 6 and 7 are vendor specific; the kernel's
        // scsi_command_size() copies 10 bytes of them, and so do we.
        _ => 10,
    };
    if len > room || len > MAX_CDB_LEN {
        return None;
    }
    Some(len)
}
