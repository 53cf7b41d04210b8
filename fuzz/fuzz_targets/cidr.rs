//! CIDR lists: parsed or refused, never a panic; a parsed list survives
//! storage unchanged, and covers itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::domain::cidr::CidrList;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let blocks: Vec<&str> = text.split('\n').collect();
    if let Ok(list) = CidrList::parse(&blocks) {
        assert_eq!(CidrList::from_stored(&list.to_stored()), list);
        assert!(list.covers(&list) || list.is_empty());
        for block in &blocks {
            if let Ok(ip) = block.trim().parse::<std::net::IpAddr>() {
                assert!(list.allows(ip), "{block} is in the list it was parsed into");
            }
        }
    }
    let stored = CidrList::from_stored(text);
    let _ = stored.allows(std::net::IpAddr::from([10, 0, 0, 1]));
});
