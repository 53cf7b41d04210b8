//! Nothing lost: concurrent creates, revokes, deletes and introspections, then a
//! server killed with SIGKILL in the middle of such a storm. Afterwards every token
//! is exactly what the acknowledged operations imply.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patd::proto::introspection_service_client::IntrospectionServiceClient;
use patd::proto::token_service_client::TokenServiceClient;
use patd::proto::{
    CreateTokenRequest, DeleteTokenRequest, GetTokenRequest, IntrospectRequest, RevokeTokenRequest,
    TokenState,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::backend_tests;
use crate::helpers::{TestApp, authed, connect_when_up, free_addr, spawn_patd};

/// What happened to an operation on a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Outcome {
    #[default]
    NotAttempted,
    Acknowledged,
    /// Sent, but the answer never came (the server died): either is possible.
    Unknown,
}

/// What the server acknowledged about one token it acknowledged creating.
#[derive(Clone, Debug, Default)]
struct Acked {
    secret: String,
    revoke: Outcome,
    delete: Outcome,
}

type Ledger = Arc<Mutex<HashMap<String, Acked>>>;

fn create(name: String) -> CreateTokenRequest {
    CreateTokenRequest {
        name,
        scopes: vec!["tag:read".to_owned()],
        expires_at: None,
        ..Default::default()
    }
}

/// One client's share of the storm: create, and revoke or delete some of what it
/// created, recording what was acknowledged and what was left in doubt. Stops at
/// `deadline`, after `rounds`, or at the first failed call (the server died).
async fn storm_worker(
    mut client: TokenServiceClient<Channel>,
    mut introspection: IntrospectionServiceClient<Channel>,
    manager: String,
    worker: usize,
    rounds: usize,
    deadline: Instant,
    ledger: Ledger,
) -> usize {
    let mut failures = 0;
    let mut mine: Vec<String> = Vec::new();
    for round in 0..rounds {
        if Instant::now() >= deadline {
            break;
        }
        let request = authed(&manager, create(format!("storm {worker}/{round}")));
        match client.create_token(request).await {
            Ok(created) => {
                let created = created.into_inner();
                let id = created.token.unwrap().id;
                let secret = created.secret.clone();
                let acked = Acked {
                    secret: created.secret,
                    ..Acked::default()
                };
                ledger.lock().unwrap().insert(id.clone(), acked);
                mine.push(id);
                // Introspect in the storm too: a token just created is active.
                let request = IntrospectRequest {
                    token: secret,
                    required_scopes: vec![],
                    client_ip: String::new(),
                    ..Default::default()
                };
                match introspection.introspect(request).await {
                    Ok(answer) => assert!(answer.into_inner().active, "a fresh token is active"),
                    Err(status) => {
                        eprintln!("storm worker {worker}, round {round}: introspect: {status:?}");
                        failures += 1;
                        break;
                    }
                }
            }
            Err(status) => {
                eprintln!("storm worker {worker}, round {round}: create: {status:?}");
                failures += 1;
                break;
            }
        }
        let Some(target) = mine.get(round.saturating_sub(1)).cloned() else {
            continue;
        };
        let revoke = round % 3 == 0;
        if !revoke && round % 5 != 0 {
            continue;
        }
        let answer = if revoke {
            let request = authed(&manager, RevokeTokenRequest { id: target.clone() });
            client.revoke_token(request).await.map(drop)
        } else {
            let request = authed(&manager, DeleteTokenRequest { id: target.clone() });
            client.delete_token(request).await.map(drop)
        };
        if let Err(status) = &answer {
            eprintln!("storm worker {worker}, round {round}: revoke or delete: {status:?}");
        }
        let acknowledged = answer.is_ok();
        let outcome = if acknowledged {
            Outcome::Acknowledged
        } else {
            Outcome::Unknown
        };
        {
            let mut ledger = ledger.lock().unwrap();
            let entry = ledger.get_mut(&target).unwrap();
            if revoke {
                entry.revoke = outcome;
            } else {
                entry.delete = outcome;
            }
        }
        if !acknowledged {
            failures += 1;
            break;
        }
    }
    failures
}

async fn run_storm(
    channel: Channel,
    manager: &str,
    rounds: usize,
    deadline: Instant,
) -> (Ledger, usize) {
    let ledger = Ledger::default();
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let client = TokenServiceClient::new(channel.clone());
            let introspection = IntrospectionServiceClient::new(channel.clone());
            let (manager, ledger) = (manager.to_owned(), ledger.clone());
            tokio::spawn(storm_worker(
                client,
                introspection,
                manager,
                worker,
                rounds,
                deadline,
                ledger,
            ))
        })
        .collect();
    let mut failures = 0;
    for worker in workers {
        failures += worker.await.unwrap();
    }
    (ledger, failures)
}

/// Checks every acknowledged operation against what `app`'s server now says.
async fn verify_ledger(
    app_tokens: &mut TokenServiceClient<Channel>,
    check: &TestApp,
    manager: &str,
    ledger: &Ledger,
) {
    let ledger = ledger.lock().unwrap().clone();
    assert!(!ledger.is_empty(), "the storm acknowledged something");
    for (id, acked) in &ledger {
        let got = app_tokens
            .get_token(authed(manager, GetTokenRequest { id: id.clone() }))
            .await;
        let active = check.is_active(&acked.secret).await;
        let state = match got {
            Ok(token) => Some(token.into_inner().state()),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => panic!("{id}: {status:?}"),
        };
        match (acked.delete, state) {
            (Outcome::Acknowledged, Some(_)) => panic!("acknowledged delete of {id} undone"),
            (Outcome::NotAttempted, None) => panic!("acknowledged create of {id} lost"),
            (_, None) => assert!(!active, "deleted {id} still active"),
            (_, Some(state)) => {
                match acked.revoke {
                    Outcome::Acknowledged => assert_eq!(state, TokenState::Revoked, "{id}"),
                    Outcome::NotAttempted => assert_eq!(state, TokenState::Active, "{id}"),
                    Outcome::Unknown => {}
                }
                assert_eq!(active, state == TokenState::Active, "{id}: {state:?}");
            }
        }
    }
}

async fn a_storm_of_concurrent_changes_loses_nothing(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ledger, failures) = run_storm(app.channel().await, &manager, 25, deadline).await;
    assert_eq!(failures, 0, "a healthy server acknowledges every call");
    assert_eq!(ledger.lock().unwrap().len(), 8 * 25);
    let mut tokens = app.tokens().await;
    verify_ledger(&mut tokens, &app, &manager, &ledger).await;
}

async fn sigkill_in_a_storm_loses_no_acknowledged_change(app: TestApp) {
    let manager = app.manager("alice", &["tag:read"]).await;
    let addr = free_addr();
    let url = app.database_url.expose().to_owned();
    let mut server = spawn_patd(&url, &addr, &[]);
    let channel = connect_when_up(&addr).await;

    let pid = server.id().to_string();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Command::new("kill").args(["-KILL", &pid]).status().unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (ledger, _) = run_storm(channel, &manager, 10_000, deadline).await;
    killer.await.unwrap();
    server.wait().unwrap();

    let mut restarted = spawn_patd(&url, &addr, &[]);
    let channel = connect_when_up(&addr).await;
    let mut tokens = TokenServiceClient::new(channel);
    verify_ledger(&mut tokens, &app, &manager, &ledger).await;
    // No half-written rows: every stored token reads back whole.
    let mut cursor = None;
    loop {
        let page = app.store.list(None, cursor, 1_000).await.unwrap();
        for token in &page.tokens {
            assert!(
                !token.name.is_empty() && !token.scopes.is_empty(),
                "{token:?}"
            );
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}

backend_tests!(sigkill_in_a_storm_loses_no_acknowledged_change);

// The storm is about what is kept, not how fast: its server gets the production
// storage timeouts, so a disk the whole test suite shares cannot fail a call.
mod patient {
    use crate::helpers::{Backend, TestApp};

    #[tokio::test]
    async fn sqlite_storm_of_concurrent_changes_loses_nothing() {
        let app = TestApp::spawn_patient(Backend::Sqlite, TestApp::settings()).await;
        super::a_storm_of_concurrent_changes_loses_nothing(
            app.expect("SQLite is always available"),
        )
        .await;
    }

    #[tokio::test]
    async fn postgres_storm_of_concurrent_changes_loses_nothing() {
        if let Some(app) = TestApp::spawn_patient(Backend::Postgres, TestApp::settings()).await {
            super::a_storm_of_concurrent_changes_loses_nothing(app).await;
        }
    }
}
