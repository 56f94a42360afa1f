//! One trait, one engine per kind of backing device: what sends a chunk
//! of a command to the backing unit. A single SCSI device is [`Disk`]: one
//! SG_IO on its node. A dm-multipath map is `mpath::Multipath`: the same
//! SG_IO down one of the map's paths, and again down another when a path
//! fails it.
//!
//! Whatever the engine, the stall rule (`crate::expiry`) is asked before
//! every SG_IO it starts, retries included: [`Call::admit`].

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::dma::ChunkIo;
use crate::error::CmdError;
use crate::scsi::sense::SgResult;
use crate::sg::io::{sg_io, SgScratch};
use crate::status::DeviceReport;
use crate::tcmu::mapping::Mapping;

/// What an engine gets from the command's thread for one chunk.
pub struct Call<'a> {
    /// The ring's mapping, which the chunk's iovecs point into.
    pub map: &'a Mapping,
    pub timeout_ms: u32,
    pub scratch: &'a mut SgScratch,
    /// The stall rule: asked before every SG_IO; an error means the SG_IO
    /// must not start, and ends the chunk with that error.
    pub admit: &'a mut dyn FnMut() -> Result<(), CmdError>,
}

/// What an engine did with a chunk.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The result the initiator's answer is made from.
    pub result: SgResult,
    /// Set when the backing unit itself is gone (its node deleted, the
    /// map removed): its path is then opened again with back-off.
    pub gone: Option<&'static str>,
    /// SG_IOs made again down another path after a path error.
    pub retries: u32,
    /// Some SG_IO of the chunk failed in the ioctl or the transport, even
    /// if a retry then succeeded.
    pub transport_error: bool,
}

impl Sent {
    /// The result of one SG_IO on a single device.
    pub fn once(result: SgResult) -> Sent {
        Sent {
            gone: result.device_gone(),
            transport_error: result.errno != 0
                || result.host_status != 0
                || result.driver_status & 0x0f != 0,
            result,
            retries: 0,
        }
    }
}

pub trait Engine: Send + Sync + std::fmt::Debug {
    /// Sends one chunk, asking `call.admit` before every SG_IO; an error
    /// is the refusal `admit` gave (nothing more was sent).
    fn send(&self, io: &ChunkIo<'_>, call: &mut Call<'_>) -> Result<Sent, CmdError>;

    /// The fd the handler's own queries at open go to (INQUIRY).
    fn query_fd(&self) -> i32;

    /// Adds what the engine knows to a status report (a map's paths).
    fn describe(&self, _r: &mut DeviceReport) {}

    /// The device it serves, for its own log lines.
    fn set_label(&self, _label: &str) {}

    /// How long an SG_IO may wait in a path's queue before its timeout
    /// starts (a transport recovering a lost session holds it there).
    fn queueing(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// A single SCSI device: every chunk is one SG_IO on its node.
#[derive(Debug)]
pub struct Disk {
    pub file: File,
    /// See [`Engine::queueing`]: the node's transport's, read at open.
    pub queueing: std::time::Duration,
}

impl Engine for Disk {
    fn send(&self, io: &ChunkIo<'_>, call: &mut Call<'_>) -> Result<Sent, CmdError> {
        (call.admit)()?;
        let r = sg_io(
            self.file.as_raw_fd(),
            call.map,
            io,
            call.timeout_ms,
            call.scratch,
        );
        Ok(Sent::once(r))
    }

    fn query_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    fn queueing(&self) -> std::time::Duration {
        self.queueing
    }
}
