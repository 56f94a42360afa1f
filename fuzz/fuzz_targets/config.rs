//! The config string (it comes from configfs, written by anyone with
//! access). Properties: no panic; an accepted string names an absolute path
//! under /dev without '..', and options within their ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_sg::config::{parse, MAX_CFG_LEN, MAX_INFLIGHT, MAX_TIMEOUT_S};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = parse(s) else {
        return;
    };
    assert!(s.len() <= MAX_CFG_LEN);
    let p = c.path.to_str().expect("ASCII");
    assert!(p.starts_with("/dev/") && p.len() > 5);
    assert!(!p.split('/').any(|x| x == ".."));
    assert!(c.timeout_s.is_none_or(|t| (1..=MAX_TIMEOUT_S).contains(&t)));
    assert!(c
        .long_timeout_s
        .is_none_or(|t| (1..=MAX_TIMEOUT_S).contains(&t)));
    assert!(c.max_xfer_kb.is_none_or(|k| (4..=1 << 20).contains(&k)));
    assert!(c.max_inflight.is_none_or(|n| (1..=MAX_INFLIGHT).contains(&n)));
});
