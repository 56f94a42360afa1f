//! The TCMU kernel ABI (`include/uapi/linux/target_core_user.h`, mailbox
//! version 2) as offsets and constants.
//!
//! Only the outer `tcmu_cmd_entry` is `__packed` in the kernel header; the
//! request struct inside the union keeps natural alignment, so `cdb_off` sits
//! at byte 24 of the entry and `iov[]` at byte 48. The ring is shared with the
//! kernel, so nothing here is a Rust reference into it: these are offsets that
//! `tcmu::ring` reads and writes with volatile accesses. The `#[repr(C)]`
//! mirrors below exist to let the compiler check those offsets.

/// `TCMU_MAILBOX_VERSION`.
pub const MAILBOX_VERSION: u16 = 2;

/// Mailbox flag: out-of-order completion.
pub const MAILBOX_FLAG_CAP_OOOC: u16 = 1 << 0;
/// Mailbox flag: `TCMU_UFLAG_READ_LEN` is honoured.
pub const MAILBOX_FLAG_CAP_READ_LEN: u16 = 1 << 1;
/// Mailbox flag: TMR notifications can be queued.
pub const MAILBOX_FLAG_CAP_TMR: u16 = 1 << 2;
/// Mailbox flag: `TCMU_UFLAG_KEEP_BUF` is honoured.
pub const MAILBOX_FLAG_CAP_KEEP_BUF: u16 = 1 << 3;

/// The capabilities a mailbox's flags announce, for logs ("out-of-order
/// completion, READ_LEN, TMR", or "none").
pub fn describe_flags(flags: u16) -> String {
    let names = [
        (MAILBOX_FLAG_CAP_OOOC, "out-of-order completion"),
        (MAILBOX_FLAG_CAP_READ_LEN, "READ_LEN"),
        (MAILBOX_FLAG_CAP_TMR, "TMR"),
        (MAILBOX_FLAG_CAP_KEEP_BUF, "KEEP_BUF"),
    ];
    let mut v: Vec<String> = names
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let unknown = flags & !names.iter().fold(0, |a, (f, _)| a | f);
    if unknown != 0 {
        v.push(format!("unknown {unknown:#x}"));
    }
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Mailbox field offsets.
pub const MB_VERSION: usize = 0;
pub const MB_FLAGS: usize = 2;
pub const MB_CMDR_OFF: usize = 4;
pub const MB_CMDR_SIZE: usize = 8;
pub const MB_CMD_HEAD: usize = 12;
pub const MB_CMD_TAIL: usize = 64;
/// `sizeof(struct tcmu_mailbox)`: `cmd_tail` is 64-byte aligned, which pads
/// the struct to two cache lines.
pub const MAILBOX_SIZE: usize = 128;

/// Entry opcodes (`len_op & 7`).
pub const OP_PAD: u32 = 0;
pub const OP_CMD: u32 = 1;
pub const OP_TMR: u32 = 2;
pub const OP_MASK: u32 = 0x7;
/// Entries are 8-byte aligned (`TCMU_OP_ALIGN_SIZE`).
pub const OP_ALIGN: usize = 8;

/// Userspace flags in the entry header.
pub const UFLAG_UNKNOWN_OP: u8 = 0x1;
pub const UFLAG_READ_LEN: u8 = 0x2;
pub const UFLAG_KEEP_BUF: u8 = 0x4;

/// Entry header offsets (`struct tcmu_cmd_entry_hdr`, packed, 8 bytes).
pub const HDR_LEN_OP: usize = 0;
pub const HDR_CMD_ID: usize = 4;
pub const HDR_KFLAGS: usize = 6;
pub const HDR_UFLAGS: usize = 7;
pub const HDR_SIZE: usize = 8;

/// Request part of a CMD entry.
pub const REQ_IOV_CNT: usize = 8;
pub const REQ_IOV_BIDI_CNT: usize = 12;
pub const REQ_IOV_DIF_CNT: usize = 16;
pub const REQ_CDB_OFF: usize = 24;
pub const REQ_IOV: usize = 48;
/// `sizeof(struct iovec)` on 64-bit Linux.
pub const IOVEC_SIZE: usize = 16;

/// Response part of a CMD entry (overlays the request).
pub const RSP_SCSI_STATUS: usize = 8;
pub const RSP_READ_LEN: usize = 12;
pub const RSP_SENSE: usize = 16;
/// `TCMU_SENSE_BUFFERSIZE`.
pub const SENSE_BUFFERSIZE: usize = 96;
/// `sizeof(struct tcmu_cmd_entry)`.
pub const CMD_ENTRY_SIZE: usize = 112;

/// TMR entry (`struct tcmu_tmr_entry`, packed).
pub const TMR_TYPE: usize = 8;
pub const TMR_CMD_CNT: usize = 12;
pub const TMR_CMD_IDS: usize = 32;

/// Generic netlink family of target_core_user.
pub const NL_FAMILY_NAME: &str = "TCM-USER";
pub const NL_MCGRP_CONFIG: &str = "config";
pub const NL_CMD_ADDED_DEVICE: u8 = 1;
pub const NL_CMD_REMOVED_DEVICE: u8 = 2;
pub const NL_CMD_RECONFIG_DEVICE: u8 = 3;
pub const NL_ATTR_DEVICE: u16 = 1;
pub const NL_ATTR_MINOR: u16 = 2;

/// Task management function types carried in a TMR entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmrType {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LunReset,
    TargetWarmReset,
    TargetColdReset,
    LunResetPro,
    Unknown(u8),
}

impl From<u8> for TmrType {
    fn from(v: u8) -> Self {
        match v {
            1 => TmrType::AbortTask,
            2 => TmrType::AbortTaskSet,
            3 => TmrType::ClearAca,
            4 => TmrType::ClearTaskSet,
            5 => TmrType::LunReset,
            6 => TmrType::TargetWarmReset,
            7 => TmrType::TargetColdReset,
            128 => TmrType::LunResetPro,
            other => TmrType::Unknown(other),
        }
    }
}

/// Base size of a CMD entry with `iov_cnt` iovecs, before the CDB
/// (`tcmu_cmd_get_base_cmd_size`).
pub fn base_cmd_size(iov_cnt: usize) -> usize {
    (REQ_IOV + iov_cnt * IOVEC_SIZE).max(CMD_ENTRY_SIZE)
}

/// Full size of a CMD entry: base plus the CDB rounded up to 8 bytes
/// (`tcmu_cmd_get_cmd_size`).
pub fn cmd_size(iov_cnt: usize, cdb_len: usize) -> usize {
    let base = base_cmd_size(iov_cnt);
    base + cdb_len.div_ceil(OP_ALIGN) * OP_ALIGN
}

/// C mirrors used only for compile-time layout checks.
#[allow(dead_code)]
mod layout {
    #[repr(C, packed)]
    pub struct Hdr {
        pub len_op: u32,
        pub cmd_id: u16,
        pub kflags: u8,
        pub uflags: u8,
    }
    /// The request struct: natural alignment, as in the kernel header.
    #[repr(C)]
    pub struct Req {
        pub iov_cnt: u32,
        pub iov_bidi_cnt: u32,
        pub iov_dif_cnt: u32,
        pub cdb_off: u64,
        pub pad1: u64,
        pub pad2: u64,
        pub iov: [Iovec; 0],
    }
    #[repr(C)]
    pub struct Iovec {
        pub base: u64,
        pub len: u64,
    }
    #[repr(C)]
    pub struct Rsp {
        pub scsi_status: u8,
        pub pad1: u8,
        pub pad2: u16,
        pub read_len: u32,
        pub sense: [u8; 96],
    }
    #[repr(C)]
    pub union ReqRsp {
        pub req: core::mem::ManuallyDrop<Req>,
        pub rsp: core::mem::ManuallyDrop<Rsp>,
    }
    #[repr(C, packed)]
    pub struct CmdEntry {
        pub hdr: Hdr,
        pub u: ReqRsp,
    }
    #[repr(C, packed)]
    pub struct TmrEntry {
        pub hdr: Hdr,
        pub tmr_type: u8,
        pub pad1: u8,
        pub pad2: u16,
        pub cmd_cnt: u32,
        pub pad3: u64,
        pub pad4: u64,
        pub cmd_ids: [u16; 0],
    }
    #[repr(C, align(64))]
    pub struct TailLine {
        pub cmd_tail: u32,
    }
    #[repr(C)]
    pub struct Mailbox {
        pub version: u16,
        pub flags: u16,
        pub cmdr_off: u32,
        pub cmdr_size: u32,
        pub cmd_head: u32,
        pub tail: TailLine,
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    use layout::*;
    assert!(size_of::<Hdr>() == HDR_SIZE);
    assert!(offset_of!(Hdr, cmd_id) == HDR_CMD_ID);
    assert!(offset_of!(Hdr, kflags) == HDR_KFLAGS);
    assert!(offset_of!(Hdr, uflags) == HDR_UFLAGS);
    assert!(HDR_SIZE + offset_of!(Req, iov_cnt) == REQ_IOV_CNT);
    assert!(HDR_SIZE + offset_of!(Req, iov_bidi_cnt) == REQ_IOV_BIDI_CNT);
    assert!(HDR_SIZE + offset_of!(Req, iov_dif_cnt) == REQ_IOV_DIF_CNT);
    assert!(HDR_SIZE + offset_of!(Req, cdb_off) == REQ_CDB_OFF);
    assert!(HDR_SIZE + offset_of!(Req, iov) == REQ_IOV);
    assert!(size_of::<Iovec>() == IOVEC_SIZE);
    assert!(HDR_SIZE + offset_of!(Rsp, scsi_status) == RSP_SCSI_STATUS);
    assert!(HDR_SIZE + offset_of!(Rsp, read_len) == RSP_READ_LEN);
    assert!(HDR_SIZE + offset_of!(Rsp, sense) == RSP_SENSE);
    assert!(size_of::<CmdEntry>() == CMD_ENTRY_SIZE);
    assert!(offset_of!(TmrEntry, tmr_type) == TMR_TYPE);
    assert!(offset_of!(TmrEntry, cmd_cnt) == TMR_CMD_CNT);
    assert!(offset_of!(TmrEntry, cmd_ids) == TMR_CMD_IDS);
    assert!(offset_of!(Mailbox, cmdr_off) == MB_CMDR_OFF);
    assert!(offset_of!(Mailbox, cmdr_size) == MB_CMDR_SIZE);
    assert!(offset_of!(Mailbox, cmd_head) == MB_CMD_HEAD);
    assert!(offset_of!(Mailbox, tail) == MB_CMD_TAIL);
    assert!(size_of::<Mailbox>() == MAILBOX_SIZE);
    assert!(MB_VERSION == 0 && MB_FLAGS == 2);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_flags_are_named() {
        assert_eq!(
            describe_flags(0x7),
            "out-of-order completion, READ_LEN, TMR"
        );
        assert_eq!(describe_flags(0), "none");
        assert!(describe_flags(0x18).ends_with("KEEP_BUF, unknown 0x10"));
    }

    #[test]
    fn entry_sizes_match_the_kernel() {
        // Seen on 6.1: a command with one iovec and a 6-byte CDB is a
        // 120-byte entry whose CDB starts 112 bytes in.
        assert_eq!(base_cmd_size(1), 112);
        assert_eq!(cmd_size(1, 6), 120);
        assert_eq!(cmd_size(0, 16), 128);
        // Four iovecs reach past the response overlay.
        assert_eq!(base_cmd_size(4), 112);
        assert_eq!(base_cmd_size(5), 128);
        assert_eq!(cmd_size(5, 32), 160);
    }

    #[test]
    fn tmr_types_decode() {
        assert_eq!(TmrType::from(1), TmrType::AbortTask);
        assert_eq!(TmrType::from(128), TmrType::LunResetPro);
        assert_eq!(TmrType::from(9), TmrType::Unknown(9));
    }
}
