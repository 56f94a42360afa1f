//! The one change tcmu-sg makes to what a backing device says: its Block
//! Limits VPD page (0xB0) tells the initiator the largest transfer tcmu-sg
//! can pass in one SG_IO.
//!
//! A READ or WRITE over that limit still works (tcmu-sg splits it and runs
//! the chunks one after the other), but an initiator that knows the limit
//! splits a large request itself and sends the pieces side by side, as it
//! would to the device (QEMU's scsi-generic does the same, for the same
//! reason). MAXIMUM TRANSFER LENGTH (bytes 8-11) and OPTIMAL TRANSFER
//! LENGTH (12-15) are lowered to tcmu-sg's limit where the device gives
//! none or a larger one; every other byte, of this page and of every other
//! INQUIRY response, is the device's.

/// INQUIRY for the Block Limits VPD page.
pub fn is_block_limits_inquiry(cdb: &[u8]) -> bool {
    cdb.len() >= 6 && cdb[0] == 0x12 && cdb[1] & 0x01 != 0 && cdb[2] == 0xb0
}

/// Caps the page's transfer lengths at `max_blocks` logical blocks;
/// returns whether it changed anything. A page too short to hold them
/// (or not the Block Limits page) is left alone.
pub fn cap_block_limits(page: &mut [u8], max_blocks: u32) -> bool {
    if page.len() < 16 || page[1] != 0xb0 || max_blocks == 0 {
        return false;
    }
    let mut changed = false;
    // MAXIMUM TRANSFER LENGTH: 0 means no limit.
    let max = u32::from_be_bytes([page[8], page[9], page[10], page[11]]);
    if max == 0 || max > max_blocks {
        page[8..12].copy_from_slice(&max_blocks.to_be_bytes());
        changed = true;
    }
    // OPTIMAL TRANSFER LENGTH: 0 means not given, and stays so.
    let opt = u32::from_be_bytes([page[12], page[13], page[14], page[15]]);
    if opt > max_blocks {
        page[12..16].copy_from_slice(&max_blocks.to_be_bytes());
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(max: u32, opt: u32) -> Vec<u8> {
        let mut p = vec![0u8; 64];
        p[1] = 0xb0;
        p[3] = 0x3c;
        p[6..8].copy_from_slice(&8u16.to_be_bytes()); // optimal granularity
        p[8..12].copy_from_slice(&max.to_be_bytes());
        p[12..16].copy_from_slice(&opt.to_be_bytes());
        p[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes()); // unmap count
        p
    }

    #[test]
    fn only_the_transfer_lengths_are_lowered() {
        let mut p = page(0, 0);
        let before = p.clone();
        assert!(cap_block_limits(&mut p, 128));
        assert_eq!(u32::from_be_bytes(p[8..12].try_into().unwrap()), 128);
        assert_eq!(u32::from_be_bytes(p[12..16].try_into().unwrap()), 0);
        // Everything else is the device's.
        for (i, (a, b)) in before.iter().zip(&p).enumerate() {
            if !(8..12).contains(&i) {
                assert_eq!(a, b, "byte {i}");
            }
        }
        let mut p = page(2048, 1024);
        assert!(cap_block_limits(&mut p, 128));
        assert_eq!(u32::from_be_bytes(p[12..16].try_into().unwrap()), 128);
        // A device's smaller limit stays.
        let mut p = page(64, 32);
        assert!(!cap_block_limits(&mut p, 128));
        assert_eq!(p, page(64, 32));
    }

    #[test]
    fn other_pages_and_short_answers_are_left_alone() {
        let mut p = page(0, 0);
        p[1] = 0xb1;
        assert!(!cap_block_limits(&mut p, 128));
        let mut short = page(0, 0)[..12].to_vec();
        assert!(!cap_block_limits(&mut short, 128));
        assert!(is_block_limits_inquiry(&[0x12, 0x01, 0xb0, 0, 0x40, 0]));
        assert!(!is_block_limits_inquiry(&[0x12, 0x00, 0xb0, 0, 0x40, 0]));
        assert!(!is_block_limits_inquiry(&[0x12, 0x01, 0x83, 0, 0x40, 0]));
    }
}
