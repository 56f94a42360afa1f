//! tcmu-sg: a LIO TCMU handler that passes every SCSI command of `sg/`
//! devices to a backing SCSI device with SG_IO.
//!
//! Layers, each knowing nothing of the ones above it:
//! - `tcmu::abi`, `scsi::cdb`, `scsi::direction`, `scsi::sense`, `dma`:
//!   pure logic, tested alone;
//! - `tcmu::mapping` (the only raw memory access), `tcmu::ring`, `sg::io`:
//!   the ring and the ioctl;
//! - `passthrough`: one command from ring entry to completion;
//! - `daemon`: devices, threads, events.

pub mod backend;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod dma;
pub mod doorbell;
pub mod error;
pub mod expiry;
pub mod export;
pub mod inspect;
pub mod mpath;
pub mod passthrough;
pub mod restore;
pub mod settings;
pub mod stats;
pub mod status;
pub mod sys;

pub mod scsi {
    pub mod cdb;
    pub mod direction;
    pub mod opcodes;
    pub mod policy;
    pub mod sense;
    pub mod timeouts;
    pub mod vpd;
}

pub mod sg {
    pub mod backing;
    pub mod engine;
    pub mod io;
}

pub mod tcmu {
    pub mod abi;
    pub mod mapping;
    #[cfg(any(test, feature = "mock"))]
    pub mod mock;
    pub mod netlink;
    pub mod ring;
    pub mod uio;
}
