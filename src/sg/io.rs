//! The SG_IO ioctl (sg v3 interface) with iovecs pointing into the TCMU data
//! area. This module and `tcmu::mapping` are where raw memory meets the
//! kernel.

use std::os::fd::RawFd;

use crate::dma::ChunkIo;
use crate::scsi::direction::Direction;
use crate::scsi::sense::SgResult;
use crate::tcmu::abi::SENSE_BUFFERSIZE;
use crate::tcmu::mapping::Mapping;

const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_NONE: libc::c_int = -1;
const SG_DXFER_TO_DEV: libc::c_int = -2;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
/// BLKSECTGET: max sectors per request on a block node, bytes on an sg node.
pub const BLKSECTGET: libc::c_ulong = 0x1267;

/// `struct sg_io_hdr` from `<scsi/sg.h>`.
#[repr(C)]
#[derive(Debug)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: libc::c_int,
    duration: u32,
    info: u32,
}

const _: () = assert!(std::mem::size_of::<SgIoHdr>() == 88);

/// The most iovecs one SG_IO call may carry (UIO_MAXIOV).
pub const MAX_IOVECS: usize = 1024;

/// Per-worker buffers reused between calls.
#[derive(Debug, Default)]
pub struct SgScratch {
    iov: Vec<libc::iovec>,
}

// SAFETY: the iovec buffer holds only addresses copied for the duration of
// one ioctl; it is cleared before reuse and never dereferenced by Rust.
unsafe impl Send for SgScratch {}

/// Issues one SG_IO on `fd` for `io`, whose iovecs are offsets into `map`.
pub fn sg_io(
    fd: RawFd,
    map: &Mapping,
    io: &ChunkIo<'_>,
    timeout_ms: u32,
    scratch: &mut SgScratch,
) -> SgResult {
    let mut res = SgResult::good();
    if io.cdb.len() > 255 || io.iovs.len() > MAX_IOVECS || io.len > u32::MAX as u64 {
        res.errno = libc::EINVAL;
        return res;
    }
    scratch.iov.clear();
    for v in io.iovs {
        // Offsets were checked against the data area when the entry was read;
        // a failure here means the mapping shrank, which cannot happen.
        let Ok(addr) = map.addr(v.off, v.len) else {
            res.errno = libc::EFAULT;
            return res;
        };
        scratch.iov.push(libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: v.len as usize,
        });
    }
    let (dir, count, dxferp) = match (io.dir, scratch.iov.len()) {
        (_, 0) | (Direction::None, _) => (SG_DXFER_NONE, 0, std::ptr::null_mut()),
        (d, 1) => (sg_dir(d), 0, scratch.iov[0].iov_base),
        (d, n) => (sg_dir(d), n as u16, scratch.iov.as_mut_ptr().cast()),
    };
    // SAFETY: dxferp points either to `count` iovecs in scratch.iov or to
    // one data-area range, all of which lie inside the mapping (checked by
    // Mapping::addr), which outlives this call; io.len is their total.
    unsafe { issue(fd, io.cdb, dir, dxferp, count, io.len as u32, timeout_ms) }
}

/// Issues one SG_IO.
///
/// # Safety
/// `dxferp` must be null (no data), or a buffer writable for `len` bytes,
/// or (when `count` > 0) an array of `count` iovecs each valid for its
/// length, for the whole call; `cdb.len()` <= 255.
unsafe fn issue(
    fd: RawFd,
    cdb: &[u8],
    dir: libc::c_int,
    dxferp: *mut libc::c_void,
    count: u16,
    len: u32,
    timeout_ms: u32,
) -> SgResult {
    let mut res = SgResult::good();
    let mut sense = [0u8; SENSE_BUFFERSIZE];
    let mut hdr = SgIoHdr {
        interface_id: b'S' as libc::c_int,
        dxfer_direction: dir,
        cmd_len: cdb.len() as u8,
        mx_sb_len: SENSE_BUFFERSIZE as u8,
        iovec_count: count,
        dxfer_len: if dir == SG_DXFER_NONE { 0 } else { len },
        dxferp,
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: hdr is a valid sg_io_hdr; cmdp/sbp point to live buffers of the
    // stated lengths; dxferp is valid for `len` bytes or `count` iovecs for
    // the duration of the call (this function's contract). The kernel
    // writes only into the sense buffer, the header and the data buffer.
    let rc = unsafe { libc::ioctl(fd, SG_IO as _, &mut hdr as *mut SgIoHdr) };
    if rc < 0 {
        res.errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return res;
    }
    res.status = hdr.status;
    res.host_status = hdr.host_status;
    res.driver_status = hdr.driver_status;
    res.sb_len_wr = hdr.sb_len_wr.min(SENSE_BUFFERSIZE as u8);
    res.sense = sense;
    res.resid = hdr.resid;
    res
}

/// A data-in command into `buf` (process memory, not the ring): for the
/// handler's own queries, such as the device identification VPD page.
pub fn sg_io_in(fd: RawFd, cdb: &[u8], buf: &mut [u8], timeout_ms: u32) -> SgResult {
    let p: *mut libc::c_void = buf.as_mut_ptr().cast();
    // SAFETY: p is buf's start, writable for buf.len() bytes while buf is
    // borrowed here.
    unsafe { own(fd, cdb, SG_DXFER_FROM_DEV, p, buf.len(), timeout_ms) }
}

/// A data-out command from `buf` (process memory): for the handler's own
/// commands, such as a reservation key registered down another path.
pub fn sg_io_out(fd: RawFd, cdb: &[u8], buf: &[u8], timeout_ms: u32) -> SgResult {
    let p = buf.as_ptr() as *mut libc::c_void;
    // SAFETY: p is buf's start, readable for buf.len() bytes while buf is
    // borrowed here; the kernel only reads a data-out buffer.
    unsafe { own(fd, cdb, SG_DXFER_TO_DEV, p, buf.len(), timeout_ms) }
}

/// One of the handler's own commands over a process buffer (no data when
/// `len` is 0).
///
/// # Safety
/// `p` must be valid for `len` bytes in the direction `dir` for the call.
unsafe fn own(
    fd: RawFd,
    cdb: &[u8],
    dir: libc::c_int,
    p: *mut libc::c_void,
    len: usize,
    timeout_ms: u32,
) -> SgResult {
    if cdb.len() > 255 || len > u32::MAX as usize {
        return SgResult::from_errno(libc::EINVAL);
    }
    let (dir, p) = if len == 0 {
        (SG_DXFER_NONE, std::ptr::null_mut())
    } else {
        (dir, p)
    };
    // SAFETY: p is null or valid for len bytes (this function's contract);
    // cdb.len() <= 255 was checked.
    unsafe { issue(fd, cdb, dir, p, 0, len as u32, timeout_ms) }
}

fn sg_dir(d: Direction) -> libc::c_int {
    match d {
        Direction::ToDevice => SG_DXFER_TO_DEV,
        Direction::FromDevice => SG_DXFER_FROM_DEV,
        Direction::None | Direction::Bidirectional => SG_DXFER_NONE,
    }
}

/// BLKSECTGET on `fd`.
pub fn blksectget(fd: RawFd) -> std::io::Result<u64> {
    let mut v: libc::c_int = 0;
    // SAFETY: BLKSECTGET writes one int (an unsigned short on block nodes,
    // zero-extended into our zeroed int) to the pointer we pass.
    let rc = unsafe { libc::ioctl(fd, BLKSECTGET as _, &mut v as *mut libc::c_int) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v as u32 as u64)
}
