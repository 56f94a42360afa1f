//! The SG_IO result -> status/sense/residual mapping, and a map's verdict
//! on it. Properties: CHECK CONDITION always carries sense that decodes;
//! the device's own sense, when well formed, passes byte for byte; the
//! residual never exceeds the transfer; a failed ioctl transfers nothing;
//! a status the device returned (other than CHECK CONDITION) is never a
//! path error; a path error is never answered as a medium error. And the
//! parsers of what a device returns to the handler's own queries (READ
//! KEYS, VPD 0x83) never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_sg::mpath::{pr::parse_keys, verdict::path_error};
use tcmu_sg::scsi::sense::{decode, key, outcome, sense_len, status, SgResult};
use tcmu_sg::sg::backing::Identity;

fuzz_target!(|data: &[u8]| {
    let _ = parse_keys(data);
    let id = Identity { page: 0x83, bytes: data.to_vec() };
    assert!(id.unit().len() <= data.len());
    let _ = id.name();
    if data.len() < 16 {
        return;
    }
    let errno = if data[0] & 1 == 0 { 0 } else { data[1] as i32 };
    let mut r = SgResult::from_errno(errno);
    r.status = data[2];
    r.host_status = u16::from_le_bytes([data[3], data[4] & 0x1f]);
    r.driver_status = u16::from_le_bytes([data[5], 0]);
    r.resid = i32::from_le_bytes([data[6], data[7], data[8], data[9]]);
    r.sb_len_wr = data[10];
    let dxfer = u32::from_le_bytes([data[11], data[12], data[13], 0]) as u64;
    let sense = &data[16..];
    let n = sense.len().min(r.sense.len());
    r.sense[..n].copy_from_slice(&sense[..n]);
    let o = outcome(&r, dxfer);
    assert!(o.residual <= dxfer);
    if errno != 0 {
        assert_eq!(o.residual, dxfer, "a failed ioctl transfers nothing");
    }
    if o.status == status::CHECK_CONDITION {
        assert!(decode(&o.sense).is_some(), "CHECK CONDITION without usable sense");
        assert!(sense_len(&o.sense) >= 8);
        let own = (r.sb_len_wr as usize).min(r.sense.len());
        if errno == 0 && r.host_status == 0 && r.driver_status & 0x0f != 0x06
            && r.status == status::CHECK_CONDITION && own > 0 && decode(&r.sense[..own]).is_some()
        {
            assert_eq!(&o.sense[..own], &r.sense[..own], "the device's sense passes unchanged");
        }
    }
    let verdict = path_error(&r);
    if errno == 0 && r.host_status == 0 && r.driver_status & 0x0f != 0x06
        && r.status != status::CHECK_CONDITION
    {
        assert!(verdict.is_none(), "the device's status {:#x} taken for a path error", r.status);
    }
    if verdict.is_some() && o.status == status::CHECK_CONDITION {
        assert_ne!(o.sense[2] & 0x0f, key::MEDIUM_ERROR, "a path error answered as a medium error");
    }
});
