//! Memory shared with the kernel: the one place raw pointers into the TCMU
//! mapping are created and dereferenced.
//!
//! Modelled on vm-memory's volatile slices: one unsafe constructor, every
//! access bounds-checked against the mapping, volatile reads and writes (the
//! kernel changes the memory under us), and explicit atomic orderings for the
//! two mailbox words that order the ring (`cmd_head`, `cmd_tail`).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// An access that would leave the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("access of {len} bytes at offset {off:#x} is outside the {size:#x}-byte mapping")]
pub struct OutOfBounds {
    pub off: u64,
    pub len: u64,
    pub size: u64,
}

/// A region of process memory shared with the kernel (or with the mock
/// kernel in tests). It is never handed out as a Rust slice.
#[derive(Debug)]
pub struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: Mapping only hands out copies and raw addresses; every access is a
// volatile or atomic operation on memory that stays mapped for the lifetime
// of the value, so sharing it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: see Send; no access creates a Rust reference into the mapping.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from offset 0, shared and read-write
    /// (the uio device's map0).
    pub fn map_shared(fd: RawFd, len: usize) -> io::Result<Self> {
        Self::map(fd, len, libc::MAP_SHARED)
    }

    /// An anonymous zeroed mapping of `len` bytes (for the mock kernel).
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Self::map(-1, len, libc::MAP_SHARED | libc::MAP_ANONYMOUS)
    }

    fn map(fd: RawFd, len: usize, flags: libc::c_int) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mapping size {len:#x} is not a positive multiple of the page size"),
            ));
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) cannot
        // alias any Rust object; the result is checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: p.cast(),
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks that `[off, off + len)` lies inside the mapping.
    pub fn check(&self, off: u64, len: u64) -> Result<usize, OutOfBounds> {
        let err = OutOfBounds {
            off,
            len,
            size: self.len as u64,
        };
        let end = off.checked_add(len).ok_or(err)?;
        if end > self.len as u64 {
            return Err(err);
        }
        Ok(off as usize)
    }

    /// The process address of a checked range, for handing to the kernel
    /// (SG_IO iovecs). Computing the address is safe; only the kernel
    /// dereferences it.
    pub fn addr(&self, off: u64, len: u64) -> Result<usize, OutOfBounds> {
        let off = self.check(off, len)?;
        Ok(self.base as usize + off)
    }

    /// Copies `buf.len()` bytes out of the mapping.
    pub fn read_bytes(&self, off: u64, buf: &mut [u8]) -> Result<(), OutOfBounds> {
        let off = self.check(off, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: off + i < off + buf.len() <= self.len (checked above),
            // so the byte is inside the live mapping.
            *b = unsafe { std::ptr::read_volatile(self.base.add(off + i)) };
        }
        Ok(())
    }

    /// Copies `buf` into the mapping.
    pub fn write_bytes(&self, off: u64, buf: &[u8]) -> Result<(), OutOfBounds> {
        let off = self.check(off, buf.len() as u64)?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: in bounds as checked above; volatile because the
            // kernel reads this memory.
            unsafe { std::ptr::write_volatile(self.base.add(off + i), *b) };
        }
        Ok(())
    }

    /// Fills `[off, off + len)` with `byte`.
    pub fn fill(&self, off: u64, len: u64, byte: u8) -> Result<(), OutOfBounds> {
        let off = self.check(off, len)?;
        for i in 0..len as usize {
            // SAFETY: in bounds as checked above.
            unsafe { std::ptr::write_volatile(self.base.add(off + i), byte) };
        }
        Ok(())
    }

    pub fn read_u8(&self, off: u64) -> Result<u8, OutOfBounds> {
        let mut b = [0u8; 1];
        self.read_bytes(off, &mut b)?;
        Ok(b[0])
    }

    pub fn read_u16(&self, off: u64) -> Result<u16, OutOfBounds> {
        let mut b = [0u8; 2];
        self.read_bytes(off, &mut b)?;
        Ok(u16::from_ne_bytes(b))
    }

    pub fn read_u32(&self, off: u64) -> Result<u32, OutOfBounds> {
        let mut b = [0u8; 4];
        self.read_bytes(off, &mut b)?;
        Ok(u32::from_ne_bytes(b))
    }

    pub fn read_u64(&self, off: u64) -> Result<u64, OutOfBounds> {
        let mut b = [0u8; 8];
        self.read_bytes(off, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    pub fn write_u8(&self, off: u64, v: u8) -> Result<(), OutOfBounds> {
        self.write_bytes(off, &[v])
    }

    pub fn write_u16(&self, off: u64, v: u16) -> Result<(), OutOfBounds> {
        self.write_bytes(off, &v.to_ne_bytes())
    }

    pub fn write_u32(&self, off: u64, v: u32) -> Result<(), OutOfBounds> {
        self.write_bytes(off, &v.to_ne_bytes())
    }

    pub fn write_u64(&self, off: u64, v: u64) -> Result<(), OutOfBounds> {
        self.write_bytes(off, &v.to_ne_bytes())
    }

    fn atomic_u32(&self, off: u64) -> Result<&AtomicU32, OutOfBounds> {
        let o = self.check(off, 4)?;
        if o % 4 != 0 {
            return Err(OutOfBounds {
                off,
                len: 4,
                size: self.len as u64,
            });
        }
        // SAFETY: the 4 bytes are inside the mapping and 4-byte aligned
        // (mmap returns page-aligned memory); AtomicU32 has the layout of
        // u32 and all access to these words goes through atomics.
        Ok(unsafe { &*(self.base.add(o) as *const AtomicU32) })
    }

    /// Loads a ring index written by the other side (Acquire: the entries it
    /// published before the index are visible after this load).
    pub fn load_acquire_u32(&self, off: u64) -> Result<u32, OutOfBounds> {
        Ok(self.atomic_u32(off)?.load(Ordering::Acquire))
    }

    /// Publishes a ring index (Release: everything written before, the
    /// completions, is visible to whoever loads the index).
    pub fn store_release_u32(&self, off: u64, v: u32) -> Result<(), OutOfBounds> {
        self.atomic_u32(off)?.store(v, Ordering::Release);
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe a mapping created by `map` and not yet
        // unmapped; no reference into it can outlive self.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_bounds_checked() {
        let m = Mapping::anonymous(4096).unwrap();
        assert!(m.write_u32(4092, 7).is_ok());
        assert_eq!(m.read_u32(4092).unwrap(), 7);
        assert!(m.read_u32(4093).is_err());
        assert!(m.read_u64(u64::MAX - 3).is_err());
        assert!(m.addr(4096, 1).is_err());
        assert!(m.addr(4095, 1).is_ok());
        assert!(m.load_acquire_u32(2).is_err(), "unaligned atomics refused");
        m.store_release_u32(64, 9).unwrap();
        assert_eq!(m.load_acquire_u32(64).unwrap(), 9);
        assert!(Mapping::anonymous(100).is_err());
    }
}
