//! A small test helper over the configfs crate, for the VM tests: a LIO
//! ramdisk (with LIO's own SPC-3 persistent reservations) exported through
//! several tcm_loop targets, i.e. one disk seen over several I_T nexuses.
//!
//!   lio ramdisk NAME PAGES WWN...      prints one /dev/sdX per WWN
//!   lio remove-ramdisk NAME WWN...
//!   lio pscsi NAME H:C:T:L WWN          LIO pscsi over a SCSI device, via tcm_loop
//!                                      (prints /dev/sdX, or the sg node of a
//!                                      tape or changer)
//!   lio remove-pscsi NAME WWN
//!   lio user NAME CFGSTRING SIZE_MB WWN  a user backstore (no netlink replies),
//!                                      exported through tcm_loop; prints /dev/sdX
//!                                      once a handler answers its scan
//!   lio remove-user NAME WWN

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use configfs::Target;

fn initiator_wwn(wwn: &str) -> String {
    // Same prefix, last digit flipped: a distinct initiator port per target.
    let mut w = wwn.to_string();
    let last = w.pop().unwrap_or('0');
    w.push(if last == 'f' { 'e' } else { 'f' });
    w
}

/// Exports `backstore` as LUN 0 of tcm_loop target `wwn`; prints the
/// initiator's block device (`disk`), else its sg node.
fn export_loop(t: &Target, wwn: &str, backstore: &Path, disk: bool) -> Result<(), String> {
    let l = t.loopback(wwn).map_err(|e| e.to_string())?;
    l.create(1, &initiator_wwn(wwn))
        .map_err(|e| e.to_string())?;
    let a = l.add_lun(1, 0, backstore).map_err(|e| e.to_string())?;
    let (sys, wait) = (Path::new("/sys"), Duration::from_secs(30));
    let dev = if disk {
        a.wait_block_device(sys, wait)
    } else {
        a.wait_sg_device(sys, wait)
    }
    .map_err(|e| e.to_string())?;
    println!("{}", dev.display());
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let t = Target::default();
    match args {
        [cmd, name, pages, wwns @ ..] if cmd == "ramdisk" && !wwns.is_empty() => {
            let pages: u64 = pages.parse().map_err(|_| "PAGES must be a number")?;
            let rd = t.ramdisk(1, name).map_err(|e| e.to_string())?;
            rd.create(pages).map_err(|e| e.to_string())?;
            for wwn in wwns {
                export_loop(&t, wwn, rd.path(), true)?;
            }
            Ok(())
        }
        [cmd, name, wwns @ ..] if cmd == "remove-ramdisk" => {
            for wwn in wwns {
                let l = t.loopback(wwn).map_err(|e| e.to_string())?;
                l.remove(1).map_err(|e| e.to_string())?;
            }
            t.ramdisk(1, name)
                .map_err(|e| e.to_string())?
                .remove()
                .map_err(|e| e.to_string())
        }
        [cmd, name, addr, wwn] if cmd == "pscsi" => {
            let addr: configfs::ScsiAddr =
                addr.parse().map_err(|e: configfs::Error| e.to_string())?;
            let p = t.pscsi(1, name).map_err(|e| e.to_string())?;
            let sys = Path::new("/sys");
            let disk = addr.block_device(sys);
            let node = disk
                .clone()
                .or_else(|| addr.sg_device(sys))
                .ok_or_else(|| format!("no device at {addr}"))?;
            p.create(&addr, &node).map_err(|e| e.to_string())?;
            export_loop(&t, wwn, p.path(), disk.is_some())
        }
        [cmd, name, wwn] if cmd == "remove-pscsi" => {
            t.loopback(wwn)
                .map_err(|e| e.to_string())?
                .remove(1)
                .map_err(|e| e.to_string())?;
            t.pscsi(1, name)
                .map_err(|e| e.to_string())?
                .remove()
                .map_err(|e| e.to_string())
        }
        [cmd, name, cfg, mb, wwn] if cmd == "user" => {
            let mb: u64 = mb.parse().map_err(|_| "SIZE_MB must be a number")?;
            let b = t.user_backstore(9, name).map_err(|e| e.to_string())?;
            let control = configfs::Control {
                dev_config: cfg.clone(),
                dev_size: mb << 20,
                hw_block_size: Some(512),
                nl_reply_supported: Some(-1),
                ..Default::default()
            };
            b.create_with(&control, &[]).map_err(|e| e.to_string())?;
            export_loop(&t, wwn, b.path(), true)
        }
        [cmd, name, wwn] if cmd == "remove-user" => {
            t.loopback(wwn)
                .map_err(|e| e.to_string())?
                .remove(1)
                .map_err(|e| e.to_string())?;
            t.user_backstore(9, name)
                .map_err(|e| e.to_string())?
                .remove()
                .map_err(|e| e.to_string())
        }
        _ => Err(
            "usage: lio ramdisk NAME PAGES WWN... | lio remove-ramdisk NAME WWN... \
                  | lio pscsi NAME H:C:T:L WWN | lio remove-pscsi NAME WWN \
                  | lio user NAME CFGSTRING SIZE_MB WWN | lio remove-user NAME WWN"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lio: {e}");
            ExitCode::from(1)
        }
    }
}
