//! Page tokens: whatever a client sends as `page_token` decodes to a position
//! or is refused with INVALID_ARGUMENT; a decoded position re-encodes to a
//! token that decodes to the same position.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::api::requests;
use patd::domain::model::Owner;
use patd::proto;
use patd::store::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let owner = Owner::new("alice", "acme").unwrap();
    for order in 0..6 {
        let request = proto::ListTokensRequest {
            order_by: order,
            ..Default::default()
        };
        let search = requests::list(&request).unwrap();
        match requests::decode_page(text, Some(&owner), &search) {
            Ok(Some(after)) => {
                let fingerprint =
                    requests::query_fingerprint(Some(&owner), &search.filter, search.order);
                let again = requests::encode_after(&after, &fingerprint);
                let decoded = requests::decode_page(&again, Some(&owner), &search).unwrap();
                assert_eq!(decoded.map(|a| a.seq), Some(after.seq));
            }
            Ok(None) => assert!(text.is_empty()),
            Err(status) => assert_eq!(status.code(), tonic::Code::InvalidArgument),
        }
    }
    if let Some(cursor) = Cursor::decode(text) {
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }
});
