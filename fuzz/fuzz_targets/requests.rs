//! Every request message, decoded from arbitrary bytes as the server decodes
//! it, run through its handler's validation: accepted, or refused with
//! INVALID_ARGUMENT; never a panic, never INTERNAL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patd::api::requests;
use patd::domain::labels::Labels;
use patd::domain::model::Owner;
use patd::domain::resource::ResourceList;
use patd::proto;
use prost::Message;
use tonic::{Code, Status};

fn refused_properly(result: Result<(), Status>) {
    if let Err(status) = result {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().is_empty());
    }
}

fn assert_labels_bounded(labels: &Labels) {
    assert!(labels.iter().count() <= 16);
    for (key, value) in labels.iter() {
        assert!(patd::domain::labels::is_valid_key(key), "{key:?}");
        assert!(value.chars().count() <= 255);
        assert!(!value.chars().any(patd::domain::text::is_forbidden));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let owner = Owner::new("alice", "acme").unwrap();
    match kind % 11 {
        0 => {
            if let Ok(request) = proto::CreateTokenRequest::decode(bytes) {
                refused_properly(requests::create(&request).map(|new| {
                    assert!(!new.scopes.is_empty());
                    assert!(!new.name.chars().any(patd::domain::text::is_forbidden));
                    assert!(
                        !new.description
                            .chars()
                            .any(patd::domain::text::is_forbidden)
                    );
                    assert_labels_bounded(&new.labels);
                    assert!(new.resources.to_strings().len() <= 32);
                    // What is stored reads back as it was accepted.
                    let stored = new.resources.to_stored();
                    assert_eq!(ResourceList::from_stored(&stored), new.resources);
                    assert_eq!(Labels::from_stored(&new.labels.to_stored()), new.labels);
                }));
            }
        }
        1 => {
            if let Ok(request) = proto::ListTokensRequest::decode(bytes) {
                refused_properly(requests::list(&request).and_then(|search| {
                    assert!(search.page_size >= 1 && search.page_size <= requests::MAX_PAGE_SIZE);
                    requests::decode_page(&request.page_token, Some(&owner), &search).map(drop)
                }));
            }
        }
        2 => {
            if let Ok(request) = proto::ListExpiringTokensRequest::decode(bytes) {
                refused_properly(requests::list_expiring(&request).and_then(|search| {
                    requests::decode_page(&request.page_token, None, &search).map(drop)
                }));
            }
        }
        3 => {
            if let Ok(request) = proto::RotateTokenRequest::decode(bytes) {
                refused_properly(requests::rotate(&request).map(|(_, rotation)| {
                    assert!(rotation.grace <= requests::MAX_GRACE);
                }));
            }
        }
        4 => {
            if let Ok(request) = proto::RotateSelfRequest::decode(bytes) {
                refused_properly(requests::rotate_self(&request).map(drop));
            }
        }
        5 => {
            if let Ok(request) = proto::GetTokenRequest::decode(bytes) {
                refused_properly(requests::requested_id(&request.id).map(drop));
            }
        }
        6 => {
            if let Ok(request) = proto::ReportLeakedTokensRequest::decode(bytes) {
                refused_properly(requests::leak_report(&request).map(|source| {
                    assert!(!source.chars().any(patd::domain::text::is_forbidden));
                    assert!(source.chars().count() <= requests::MAX_SOURCE_CHARS);
                }));
            }
        }
        7 => {
            if let Ok(request) = proto::ListTokenEventsRequest::decode(bytes) {
                refused_properly(requests::list_events(&request).map(drop));
            }
        }
        8 => {
            if let Ok(request) = proto::IntrospectRequest::decode(bytes) {
                refused_properly(requests::introspect(&request).map(drop));
            }
        }
        9 => {
            if let Ok(request) = proto::UpdateTokenRequest::decode(bytes) {
                refused_properly(requests::update(&request).map(|(_, update)| {
                    assert!(
                        update.name.is_some()
                            || update.description.is_some()
                            || update.labels.is_some()
                    );
                    if let Some(labels) = &update.labels {
                        assert_labels_bounded(labels);
                    }
                }));
            }
        }
        _ => {
            if let Ok(request) = proto::RevokeTokenRequest::decode(bytes) {
                refused_properly(requests::requested_id(&request.id).map(drop));
            }
        }
    }
});
