//! Client addresses on a dual-stack listener: an IPv4 client reaches an `[::]`
//! socket as `::ffff:a.b.c.d`, and must still count as its own IPv4 address in
//! every per-network budget, allowlist and record — not share a bucket with
//! every other IPv4 client.

use std::net::IpAddr;
use std::time::Duration;

use patd::proto::token_service_client::TokenServiceClient;
use patd::proto::{ListTokensRequest, ReportLeakedTokensRequest};
use tonic::Code;

use crate::helpers::{Backend, TestApp, authed, create};

fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

async fn tokens_from(app: &TestApp, from: IpAddr) -> TokenServiceClient<tonic::transport::Channel> {
    TokenServiceClient::new(app.channel_from(from).await)
}

async fn ipv4_clients_of_a_dual_stack_listener_count_singly(backend: Backend) {
    let settings = patd::serve::ServerSettings {
        last_used_interval: Duration::from_millis(100),
        ..TestApp::settings()
    };
    let Some(app) = TestApp::spawn_dual_stack(backend, settings).await else {
        return;
    };

    // One client uses up its leak-report budget; another IPv4 client still has its own.
    let report = || ReportLeakedTokensRequest {
        tokens: vec!["patd_nothing".to_owned()],
        source: String::new(),
    };
    let mut flooder = tokens_from(&app, loopback(2)).await;
    for _ in 0..patd::api::tokens::LEAK_REPORTS_PER_MINUTE {
        flooder.report_leaked_tokens(report()).await.unwrap();
    }
    let refused = flooder.report_leaked_tokens(report()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let mut other = tokens_from(&app, loopback(3)).await;
    other
        .report_leaked_tokens(report())
        .await
        .expect("another IPv4 client has a budget of its own");

    // Likewise the budget for recording refusals without a valid credential.
    let junk = |client: &mut TokenServiceClient<_>| {
        let secret = app.format.generate().expose().to_owned();
        let mut client = client.clone();
        async move {
            let err = client
                .list_tokens(authed(&secret, ListTokensRequest::default()))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unauthenticated);
        }
    };
    for _ in 0..patd::api::refusals::ANONYMOUS_PER_NETWORK_PER_MINUTE + 5 {
        junk(&mut flooder).await;
    }
    junk(&mut other).await;
    let trail = app.store.list_events(None, None, 100).await.unwrap().events;
    let peers: Vec<&str> = trail
        .iter()
        .filter(|event| event.kind == patd::store::EventKind::Denied)
        .map(|event| event.actor.peer.as_str())
        .collect();
    let from = |last: u8| {
        let prefix = format!("127.0.0.{last}:");
        peers
            .iter()
            .filter(|peer| peer.starts_with(&prefix))
            .count()
    };
    assert_eq!(
        from(2),
        patd::api::refusals::ANONYMOUS_PER_NETWORK_PER_MINUTE as usize,
        "{peers:?}"
    );
    assert_eq!(
        from(3),
        1,
        "the other client's refusal is recorded: {peers:?}"
    );

    // An allowlisted credential works from its address, and the address is
    // recorded as IPv4 in the audit trail and as the last use.
    let (manager, record) = app
        .mint_limited(
            ("alice", "acme"),
            &["personalAccessToken:write", "tag:read"],
            None,
            &["127.0.0.2/32"],
        )
        .await;
    let created = flooder
        .create_token(authed(
            &manager,
            patd::proto::CreateTokenRequest {
                allowed_cidrs: vec!["127.0.0.2".to_owned()],
                ..create("ci", &["tag:read"])
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.token.is_some());
    let err = other
        .list_tokens(authed(&manager, ListTokensRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "outside its allowlist");
    let trail = app
        .store
        .list_events(Some("acme"), None, 10)
        .await
        .unwrap()
        .events;
    let created_event = trail
        .iter()
        .find(|event| event.kind == patd::store::EventKind::Created)
        .unwrap();
    assert!(
        created_event.actor.peer.starts_with("127.0.0.2:"),
        "{}",
        created_event.actor.peer
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stored = app.store.find_by_id(&record.id).await.unwrap().unwrap();
        if let Some(ip) = stored.last_used_ip {
            assert_eq!(ip, "127.0.0.2");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod sqlite {
    #[tokio::test]
    async fn ipv4_clients_of_a_dual_stack_listener_count_singly() {
        super::ipv4_clients_of_a_dual_stack_listener_count_singly(crate::helpers::Backend::Sqlite)
            .await;
    }
}

mod postgres {
    #[tokio::test]
    async fn ipv4_clients_of_a_dual_stack_listener_count_singly() {
        super::ipv4_clients_of_a_dual_stack_listener_count_singly(
            crate::helpers::Backend::Postgres,
        )
        .await;
    }
}
