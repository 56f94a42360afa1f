//! The command policy. Input: a class selector, a policy selector, a data
//! length selector, then a CDB. Properties: under `standard` and under
//! `readonly`, a command the policy refuses never reaches the I/O function
//! (`passthrough::execute` answers it itself, with the sense its refusal
//! names and no data moved); a command that changes the medium never
//! reaches it under `readonly`; under `full` nothing is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcmu_sg::dma::Scratch;
use tcmu_sg::passthrough::{execute, DeviceParams};
use tcmu_sg::scsi::direction::DeviceClass;
use tcmu_sg::scsi::opcodes::{self, Effect};
use tcmu_sg::scsi::policy::{judge, Answer, Family, Policy};
use tcmu_sg::scsi::sense::{status, SgResult};
use tcmu_sg::tcmu::ring::{CmdRequest, DataIov};

const POLICIES: [&str; 4] = ["full", "standard", "standard+firmware+format", "standard+ata+vendor+diag"];

fuzz_target!(|data: &[u8]| {
    let [c, p, l, cdb @ ..] = data else {
        return;
    };
    if cdb.is_empty() || cdb.len() > 32 {
        return;
    }
    let (class, family) = [
        (DeviceClass::Block, Family::Disk),
        (DeviceClass::Stream, Family::Tape),
        (DeviceClass::Mmc, Family::Mmc),
        (DeviceClass::Changer, Family::Changer),
        (DeviceClass::Block, Family::Other),
    ][*c as usize % 5];
    let mut policy = Policy::parse(POLICIES[*p as usize % 4]).unwrap();
    policy.readonly = p & 0x80 != 0;
    let len = [0u64, 512, 4096][*l as usize % 3];
    let dev = DeviceParams {
        class,
        block_size: 512,
        max_bytes: 1 << 20,
        family,
        policy,
    };
    let cmd = CmdRequest {
        cmd_id: 1,
        cdb: cdb.to_vec(),
        iovs: if len > 0 { vec![DataIov { off: 0, len }] } else { vec![] },
        bidi_iovs: vec![],
        dif_cnt: 0,
        seen_after: None,
        read_at: None,
    };
    let verdict = judge(cdb, class, family, &policy);
    let mut reached = 0u32;
    let (_, o, refused) = execute(&cmd, &dev, &mut Scratch::default(), &mut reached, |n, _| {
        *n += 1;
        Ok(SgResult::good())
    });
    assert_eq!(refused.is_some(), verdict.is_err());
    if let Err(r) = verdict {
        assert_eq!(reached, 0, "a refused command reached the device: {r}");
        assert_eq!(o.status, status::CHECK_CONDITION);
        let s = o.sense_code().expect("sense");
        let want = match r.answer {
            Answer::Opcode => (0x5, 0x20),
            Answer::Field => (0x5, 0x24),
            Answer::WriteProtected => (0x7, 0x27),
        };
        assert_eq!((s.key, s.asc), want);
        assert_eq!(o.residual, len, "no data moved");
    }
    if policy == Policy::FULL {
        assert!(refused.is_none());
    }
    if policy.readonly && reached > 0 {
        let e = opcodes::lookup(cdb, class).map(|o| o.effect);
        assert!(
            matches!(
                e,
                Some(Effect::Read | Effect::Info | Effect::Cache | Effect::Reserve | Effect::Motion)
            ),
            "read-only let {:02x?} ({e:?}) reach the device",
            cdb
        );
    }
});
