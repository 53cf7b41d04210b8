//! Webhooks through a real server and real HTTP receivers (`receiver.rs`,
//! which checks signatures with its own HMAC): every event type, retries with
//! a stable id, timeouts, 410 Gone, dead letters and `patd admin webhooks`,
//! order under concurrent changes, the outbox's transaction, and expiry
//! reminders across a restart. Both backends.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use patd::domain::clock;
use patd::proto::{
    DeleteTokenRequest, ReportLeakedTokensRequest, ResumeTokenRequest, RevokeTokenRequest,
    RotateTokenRequest, SuspendTokenRequest,
};

use crate::helpers::{Backend, TestApp, authed, create, rename};
use crate::metrics::{scrape, value};
use crate::receiver::{Received, Receiver, Script, endpoint, settings};

/// Runs `$name(Backend)` once per backend (Postgres when configured).
macro_rules! each_backend {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::helpers::Backend::Sqlite).await; })+
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(crate::helpers::Backend::Postgres).await; })+
        }
    };
}

each_backend!(
    every_event_type_arrives_signed_and_without_secrets,
    failures_and_timeouts_are_retried_with_the_same_id,
    gone_disables_and_dead_letters_wait_for_an_operator,
    order_per_endpoint_holds_under_concurrent_changes,
    a_change_that_rolls_back_sends_nothing,
    expiry_reminders_come_once_each_across_a_restart,
);

const WAIT: Duration = Duration::from_secs(20);

/// A server delivering to `receiver` as endpoint `siem`, retrying for `retry_for`.
async fn spawn_for(backend: Backend, receiver: &Receiver, retry_for: &str) -> Option<TestApp> {
    spawn(
        backend,
        settings(vec![endpoint("siem", &receiver.url())], retry_for, &[]),
    )
    .await
}

/// A token of alice's, as `patd admin create` stores it (with its `created` event).
async fn insert_token(
    store: &patd::store::Store,
    format: &patd::domain::token::TokenFormat,
    name: &str,
) {
    let spec = patd::domain::model::TokenSpec {
        name,
        scopes: patd::domain::model::parse_scopes(&["tag:read".to_owned()]).unwrap(),
        expires_at: None,
        allowed_cidrs: Default::default(),
        description: String::new(),
        labels: Default::default(),
        resources: Default::default(),
    };
    let owner = patd::domain::model::Owner::new("alice", "acme").unwrap();
    let (new, _) = spec.issue(format, owner, clock::now_micros()).unwrap();
    store
        .insert(&new, &patd::domain::model::Actor::operator())
        .await
        .unwrap();
}

/// A server delivering as `settings` say, once its endpoints are registered
/// (an endpoint gets the events that commit after that).
async fn spawn(backend: Backend, settings: patd::serve::ServerSettings) -> Option<TestApp> {
    let wanted = settings.webhooks.endpoints.len();
    let app = TestApp::spawn_with(backend, settings).await?;
    registered(&app.store, wanted).await;
    Some(app)
}

pub async fn registered(store: &patd::store::Store, wanted: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while store.endpoint_statuses().await.map_or(0, |all| all.len()) < wanted {
        assert!(
            tokio::time::Instant::now() < deadline,
            "endpoints never registered"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn types(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.body["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `patd admin webhooks ARGS` on the app's database, with the tests' retry
/// window (1 s) in its configuration.
fn patd_admin(app: &TestApp, args: &[&str]) -> std::process::Output {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[webhook_delivery]\nretry_for = \"1s\"\n").unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_patd"))
        .args([
            "--database-url",
            app.database_url.expose(),
            "admin",
            "webhooks",
        ])
        .args(args)
        .env("PATD_CONFIG", config.path())
        .output()
        .expect("patd runs")
}

async fn every_event_type_arrives_signed_and_without_secrets(backend: Backend) {
    let receiver = Receiver::start(Script::Accept).await;
    let config = endpoint("siem", &receiver.url());
    // A reminder 1 s before expiry, so token.expiring and token.expired come too.
    let Some(app) = spawn(backend, settings(vec![config], "1h", &["1s"])).await else {
        return;
    };
    let manager = app.manager("alice", &["tag:read"]).await;
    let mut tokens = app.tokens().await;
    let mut secrets = vec![manager.clone()];
    let mut request = create("deploy", &["tag:read"]);
    request.expires_at = Some(clock::to_timestamp(clock::now_micros() + 2_500_000));
    let created = tokens
        .create_token(authed(&manager, request))
        .await
        .unwrap()
        .into_inner();
    let id = created.token.clone().unwrap().id;
    secrets.push(created.secret.clone());
    tokens
        .update_token(authed(&manager, rename(&id, "deploy-2")))
        .await
        .unwrap();
    let suspend = SuspendTokenRequest { id: id.clone() };
    tokens
        .suspend_token(authed(&manager, suspend))
        .await
        .unwrap();
    let resume = ResumeTokenRequest { id: id.clone() };
    tokens.resume_token(authed(&manager, resume)).await.unwrap();
    // Expiring and expired, while the token is active.
    receiver
        .wait_for(WAIT, |got| types(got).iter().any(|t| t == "token.expired"))
        .await;
    // A second token: rotated, its old secret reused, leaked, revoked, deleted.
    let (old, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    secrets.push(old.clone());
    let rotate = RotateTokenRequest {
        id: record.id.clone(),
        ..Default::default()
    };
    let rotated = tokens
        .rotate_token(authed(&manager, rotate))
        .await
        .unwrap()
        .into_inner();
    secrets.push(rotated.secret.clone());
    assert!(
        !app.is_active(&old).await,
        "the retired secret is refused (reuse)"
    );
    let (leaked, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    secrets.push(leaked.clone());
    let report = ReportLeakedTokensRequest {
        tokens: vec![leaked],
        source: "https://paste.example/1".to_owned(),
    };
    tokens.report_leaked_tokens(report).await.unwrap();
    let (third, victim) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    secrets.push(third);
    let revoke = RevokeTokenRequest {
        id: victim.id.clone(),
    };
    tokens.revoke_token(authed(&manager, revoke)).await.unwrap();
    let delete = DeleteTokenRequest {
        id: victim.id.clone(),
    };
    tokens.delete_token(authed(&manager, delete)).await.unwrap();

    let all = [
        "token.created",
        "token.updated",
        "token.rotated",
        "token.revoked",
        "token.deleted",
        "token.suspended",
        "token.resumed",
        "token.reuse_detected",
        "token.leak_reported",
        "token.expiring",
        "token.expired",
    ];
    let got = receiver
        .wait_for(WAIT, |got| {
            let seen = types(got);
            all.iter().all(|wanted| seen.iter().any(|t| t == wanted))
        })
        .await;
    for received in &got {
        assert!(received.verified, "signature verifies: {received:?}");
        assert_eq!(received.body["id"].as_str(), Some(received.id.as_str()));
        assert!(received.id.starts_with("evt_"), "{}", received.id);
        let age = clock::now_micros() / 1_000_000 - received.timestamp;
        assert!((0..60).contains(&age), "webhook-timestamp is now: {age}");
        assert_eq!(received.headers["content-type"], "application/json");
        let data = &received.body["data"];
        assert_eq!(data["subject"], "alice", "{}", received.raw);
        assert_eq!(data["account"], "acme");
        assert!(data["token_id"].is_string());
        for secret in &secrets {
            assert!(
                !received.raw.contains(secret.as_str()),
                "a secret in {}",
                received.raw
            );
            // Not its hash either (hex, as logs would write it).
            let hash = app.format.parse(secret).unwrap();
            let hex: String = hash.0.iter().map(|byte| format!("{byte:02x}")).collect();
            assert!(!received.raw.contains(&hex), "a hash in {}", received.raw);
        }
        for (name, value) in &received.headers {
            assert!(
                !value.to_str().unwrap_or_default().contains("patd_"),
                "{name}"
            );
        }
    }
    let by_type: HashMap<String, &Received> = got
        .iter()
        .map(|r| (r.body["type"].as_str().unwrap().to_owned(), r))
        .collect();
    let deleted = &by_type["token.deleted"].body["data"];
    assert_eq!(deleted["token_id"], victim.id.as_str());
    assert_eq!(
        deleted["name"], "minted",
        "a deleted token's event still names it"
    );
    assert_eq!(deleted["scopes"][0], "tag:read");
    let expiring = &by_type["token.expiring"].body["data"];
    assert_eq!(expiring["token_id"], id.as_str());
    assert!(expiring["expires_at"].is_string());
    assert_eq!(by_type["token.updated"].body["data"]["name"], "deploy-2");
    assert!(
        by_type["token.leak_reported"].body["data"]["detail"]
            .as_str()
            .unwrap()
            .contains("paste.example")
    );
    assert_eq!(
        by_type["token.reuse_detected"].body["data"]["actor"],
        "patd"
    );
    let created_by_call = got
        .iter()
        .find(|r| r.body["type"] == "token.created" && r.body["data"]["token_id"] == id.as_str())
        .unwrap();
    assert!(
        created_by_call.body["data"]["peer"].is_string(),
        "the caller's address"
    );
    assert!(
        created_by_call.body["data"]["actor"]
            .as_str()
            .unwrap()
            .starts_with("token:")
    );

    let (scrape, text) = scrape(&app).await;
    let delivered = value(
        &scrape,
        "patd_webhook_deliveries_total",
        &[("endpoint", "siem"), ("outcome", "delivered")],
    );
    assert!(delivered >= all.len() as f64, "{text}");
    assert!(
        !text.contains("query-secret"),
        "the URL's query never reaches metrics"
    );
    assert!(
        text.contains("patd_webhook_pending{endpoint=\"siem\"}"),
        "{text}"
    );
    assert!(
        !crate::helpers::logs().contains("query-secret"),
        "nor the log"
    );
}

async fn failures_and_timeouts_are_retried_with_the_same_id(backend: Backend) {
    let receiver = Receiver::start(Script::FailFirst(3)).await;
    let Some(app) = spawn_for(backend, &receiver, "1h").await else {
        return;
    };
    let (_, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let got = receiver.wait_for(WAIT, |got| !got.is_empty()).await;
    let attempts = receiver.received();
    assert_eq!(
        attempts.len(),
        4,
        "three failures, then delivered: {attempts:#?}"
    );
    assert!(
        attempts
            .iter()
            .all(|a| a.id == got[0].id && a.raw == got[0].raw)
    );
    assert_eq!(got[0].body["data"]["token_id"], record.id.as_str());
    let (scrape, _) = scrape(&app).await;
    let count = |outcome| {
        value(
            &scrape,
            "patd_webhook_deliveries_total",
            &[("endpoint", "siem"), ("outcome", outcome)],
        )
    };
    assert_eq!((count("failed"), count("delivered")), (3.0, 1.0));

    // A receiver that does not answer within the timeout (500 ms) is retried,
    // and Introspect does not wait for it meanwhile.
    receiver.set(Script::HangFirst(1));
    let (secret, record) = app.mint(("bob", "acme"), &["tag:read"], None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    assert!(app.is_active(&secret).await);
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let got = receiver
        .wait_for(WAIT, |got| {
            got.iter()
                .any(|r| r.body["data"]["token_id"] == record.id.as_str())
        })
        .await;
    let last = got.last().unwrap();
    let attempts: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| r.id == last.id)
        .collect();
    assert_eq!(attempts.len(), 2, "the hung attempt and the retry");
}

async fn gone_disables_and_dead_letters_wait_for_an_operator(backend: Backend) {
    let receiver = Receiver::start(Script::Gone).await;
    // Retries stop after 1 s: what then fails is dead-lettered.
    let Some(app) = spawn_for(backend, &receiver, "1s").await else {
        return;
    };
    app.mint(("alice", "acme"), &["tag:read"], None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let listing = loop {
        let output = patd_admin(&app, &["list"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.contains("disabled") {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never disabled: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(listing.contains("410 Gone"), "{listing}");
    app.mint(("alice", "acme"), &["tag:read"], None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "a disabled endpoint gets nothing more"
    );
    let (scrape_now, _) = scrape(&app).await;
    assert_eq!(
        value(
            &scrape_now,
            "patd_webhook_deliveries_total",
            &[("endpoint", "siem"), ("outcome", "gone")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape_now,
            "patd_webhook_endpoint_disabled",
            &[("endpoint", "siem")]
        ),
        1.0
    );

    // Re-enabled by an operator: both events come, in order.
    receiver.set(Script::Fail);
    let output = patd_admin(&app, &["retry", "siem"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("enabled again"),
        "{output:?}"
    );
    // The receiver now fails for good: after 1 s both are dead letters.
    let deadline = tokio::time::Instant::now() + WAIT;
    let listing = loop {
        let text = String::from_utf8_lossy(&patd_admin(&app, &["list"]).stdout).into_owned();
        if text.matches("  dead evt_").count() == 2 {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(listing.contains("HTTP 503"), "{listing}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (scrape_now, _) = scrape(&app).await;
        if value(
            &scrape_now,
            "patd_webhook_dead_letters",
            &[("endpoint", "siem")],
        ) == 2.0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never showed 2 dead letters"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_dead = listing
        .lines()
        .filter_map(|line| line.trim().strip_prefix("dead "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .next_back()
        .unwrap();

    // One event sent again on request, then the rest.
    receiver.set(Script::Accept);
    let output = patd_admin(&app, &["retry", "siem", "--event", &first_dead]);
    assert!(output.status.success(), "{output:?}");
    let got = receiver.wait_for(WAIT, |got| !got.is_empty()).await;
    assert_eq!(got[0].id, first_dead);
    assert!(patd_admin(&app, &["retry", "siem"]).status.success());
    receiver.wait_for(WAIT, |got| got.len() == 2).await;
    let unknown = patd_admin(&app, &["retry", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no webhook endpoint named"));
}

async fn order_per_endpoint_holds_under_concurrent_changes(backend: Backend) {
    let receiver = Receiver::start(Script::Accept).await;
    let Some(app) = spawn_for(backend, &receiver, "1h").await else {
        return;
    };
    let manager = app.manager("alice", &["tag:read"]).await;
    // 16 writers at once, each creating, renaming, revoking and deleting tokens.
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut tokens = app.tokens().await;
        let manager = manager.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..5 {
                let name = format!("w{writer}-{round}");
                let created = tokens
                    .create_token(authed(&manager, create(&name, &["tag:read"])))
                    .await
                    .unwrap()
                    .into_inner();
                let id = created.token.unwrap().id;
                tokens
                    .update_token(authed(&manager, rename(&id, &format!("{name}-b"))))
                    .await
                    .unwrap();
                tokens
                    .revoke_token(authed(&manager, RevokeTokenRequest { id: id.clone() }))
                    .await
                    .unwrap();
                tokens
                    .delete_token(authed(&manager, DeleteTokenRequest { id }))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // The manager's own creation, then 80 tokens × 4 events.
    let got = receiver.wait_for(WAIT, |got| got.len() >= 321).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_all = receiver.accepted();
    assert_eq!(got_all.len(), 321, "each event once");
    let mut per_token: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for received in &got {
        let token = received.body["data"]["token_id"]
            .as_str()
            .unwrap()
            .to_owned();
        per_token
            .entry(token)
            .or_default()
            .push(received.body["type"].as_str().unwrap().to_owned());
    }
    for (token, kinds) in &per_token {
        if kinds.len() == 4 {
            assert_eq!(
                kinds,
                &[
                    "token.created",
                    "token.updated",
                    "token.revoked",
                    "token.deleted"
                ],
                "{token}"
            );
        }
    }
    assert_eq!(per_token.len(), 81);
    // Event times never go backwards along the endpoint's stream by more than
    // the commits' own interleaving: ids are distinct.
    let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 321);
}

async fn a_change_that_rolls_back_sends_nothing(backend: Backend) {
    let receiver = Receiver::start(Script::Accept).await;
    let Some(app) = spawn_for(backend, &receiver, "1h").await else {
        return;
    };
    let manager = app.manager("alice", &["tag:read"]).await;
    let (secret, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    receiver.wait_for(WAIT, |got| got.len() == 2).await;
    // The audit insert of a revocation fails: the revocation must roll back
    // with it (the event and the change are one transaction).
    match backend {
        Backend::Sqlite => {
            app.execute_raw(
                "CREATE TRIGGER refuse_revoked BEFORE INSERT ON token_events \
                 WHEN NEW.kind = 'revoked' BEGIN SELECT RAISE(ABORT, 'refused by test'); END",
                &[],
            )
            .await
        }
        Backend::Postgres => {
            app.execute_raw(
                "CREATE FUNCTION refuse_revoked() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.kind = 'revoked' THEN RAISE EXCEPTION 'refused by test'; END IF; \
                 RETURN NEW; END $$",
                &[],
            )
            .await;
            app.execute_raw(
                "CREATE TRIGGER refuse_revoked BEFORE INSERT ON token_events \
                 FOR EACH ROW EXECUTE FUNCTION refuse_revoked()",
                &[],
            )
            .await
        }
    }
    let mut tokens = app.tokens().await;
    let refused = tokens
        .revoke_token(authed(
            &manager,
            RevokeTokenRequest {
                id: record.id.clone(),
            },
        ))
        .await;
    assert!(refused.is_err(), "the revocation failed with its event");
    assert!(app.is_active(&secret).await, "and did not take effect");
    let drop_trigger = match backend {
        Backend::Sqlite => "DROP TRIGGER refuse_revoked",
        Backend::Postgres => "DROP TRIGGER refuse_revoked ON token_events",
    };
    app.execute_raw(drop_trigger, &[]).await;
    tokens
        .revoke_token(authed(
            &manager,
            RevokeTokenRequest {
                id: record.id.clone(),
            },
        ))
        .await
        .unwrap();
    let got = receiver.wait_for(WAIT, |got| got.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        types(&receiver.accepted()),
        ["token.created", "token.created", "token.revoked"]
    );
    assert_eq!(got[2].body["data"]["token_id"], record.id.as_str());
}

async fn expiry_reminders_come_once_each_across_a_restart(backend: Backend) {
    let receiver = Receiver::start(Script::Accept).await;
    let config = || {
        let mut config = endpoint("owners", &receiver.url());
        config.events = Some(vec!["token.expiring".into(), "token.expired".into()]);
        settings(vec![config], "1h", &["2s", "30d"])
    };
    let Some(app) = spawn(backend, config()).await else {
        return;
    };
    let now = clock::now_micros();
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, record) = app
            .mint(
                ("alice", "acme"),
                &["tag:read"],
                Some(now + 3_000_000 + i * 100_000),
            )
            .await;
        ids.push(record.id);
    }
    // Revoked and suspended tokens get no reminder.
    let (_, revoked) = app
        .mint(("alice", "acme"), &["tag:read"], Some(now + 3_000_000))
        .await;
    crate::helpers::revoke_as_operator(&app.store, &revoked).await;
    // Created inside the 2 s window: no `expiring` for it, but `expired`.
    let (_, late) = app
        .mint(("alice", "acme"), &["tag:read"], Some(now + 1_500_000))
        .await;
    receiver
        .wait_for(WAIT, |got| {
            types(got).iter().filter(|t| *t == "token.expiring").count() >= 5
        })
        .await;
    // Restart on the same database (and on Postgres, a second replica too).
    let url = app.database_url.clone();
    let first = app.restart(config()).await;
    let second = match backend {
        Backend::Postgres => Some(
            TestApp::spawn_with_store(
                backend,
                TestApp::connect_store(&url).await,
                url.clone(),
                config(),
            )
            .await,
        ),
        Backend::Sqlite => None,
    };
    receiver
        .wait_for(WAIT, |got| {
            types(got).iter().filter(|t| *t == "token.expired").count() >= 6
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = receiver.accepted();
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for received in &got {
        let key = (
            received.body["data"]["token_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            received.body["type"].as_str().unwrap().to_owned(),
        );
        *counts.entry(key).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            counts.get(&(id.clone(), "token.expiring".into())),
            Some(&1),
            "{counts:?}"
        );
        assert_eq!(
            counts.get(&(id.clone(), "token.expired".into())),
            Some(&1),
            "{counts:?}"
        );
    }
    assert_eq!(
        counts.get(&(late.id.clone(), "token.expiring".into())),
        None
    );
    assert_eq!(
        counts.get(&(late.id.clone(), "token.expired".into())),
        Some(&1)
    );
    assert!(
        !counts.keys().any(|(id, _)| *id == revoked.id),
        "{counts:?}"
    );
    assert_eq!(got.len(), 11, "{counts:?}");
    drop(second);
    first.stop().await.unwrap();
}

/// Two replicas on one Postgres database: each of 1,000 events is delivered
/// exactly once (one replica holds the endpoint's lease at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_replicas_deliver_each_event_exactly_once() {
    let receiver = Receiver::start(Script::Accept).await;
    let config = || settings(vec![endpoint("siem", &receiver.url())], "1h", &[]);
    let Some(a) = spawn(Backend::Postgres, config()).await else {
        return;
    };
    let store = TestApp::connect_store(&a.database_url).await;
    let b =
        TestApp::spawn_with_store(Backend::Postgres, store, a.database_url.clone(), config()).await;
    let mut writers = Vec::new();
    for writer in 0..4 {
        let store = if writer % 2 == 0 {
            a.store.clone()
        } else {
            b.store.clone()
        };
        let format = a.format.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..250 {
                insert_token(&store, &format, &format!("w{writer}-{i}")).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    receiver
        .wait_for(Duration::from_secs(60), |got| got.len() >= 1000)
        .await;
    // Long enough for a second delivery by the other replica to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let received = receiver.received();
    let mut ids: Vec<&str> = received.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (received.len(), ids.len()),
        (1000, 1000),
        "each event exactly once"
    );
    assert!(received.iter().all(|r| r.verified));
    drop(b);
}

/// Two `patd serve` processes on one Postgres database; the one delivering
/// is killed with SIGKILL mid-delivery: every event still arrives (the other
/// takes the lease once it lapses), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_mid_delivery_loses_nothing() {
    use crate::helpers::{free_addr, spawn_patd};
    let Some(url) = crate::helpers::postgres_url() else {
        return;
    };
    let _ = url;
    let dir = tempfile::tempdir().unwrap();
    let Some(database) = TestApp::fresh_database(Backend::Postgres, &dir).await else {
        return;
    };
    let store = TestApp::connect_store(&database).await;
    // A slow receiver (20 ms a delivery), so the kill lands mid-stream.
    let receiver = Receiver::start(Script::Slow(Duration::from_millis(20))).await;
    let config = dir.path().join("patd.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"siem\"\nurl = \"{}\"\nsecret = \"{}\"\ntimeout = \"500ms\"\n\n\
             [webhook_delivery]\nlease = \"2s\"\npoll_interval = \"100ms\"\n",
            receiver.url(),
            crate::receiver::SECRET
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let mut replicas: Vec<crate::helpers::KillOnDrop> = (0..2)
        .map(|_| spawn_patd(database.expose(), &free_addr(), &["--config", &config]))
        .collect();
    registered(&store, 1).await;
    let format = patd::domain::token::TokenFormat::default();
    for i in 0..300 {
        insert_token(&store, &format, &format!("t{i}")).await;
    }
    receiver
        .wait_for(Duration::from_secs(60), |got| got.len() >= 100)
        .await;
    // Kill whichever process holds the lease (its pid is in the lease's name).
    let holder = store.endpoint_statuses().await.unwrap()[0]
        .lease_owner
        .clone();
    let pid: u32 = holder.split('/').nth(1).unwrap().parse().unwrap();
    let index = replicas
        .iter()
        .position(|r| r.0.id() == pid)
        .expect("a replica holds the lease");
    let mut killed = replicas.remove(index);
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    let at_kill = receiver.received().len();
    assert!(
        at_kill < 300,
        "the kill came mid-delivery ({at_kill} of 300)"
    );
    let got = receiver
        .wait_for(Duration::from_secs(60), |got| {
            let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            ids.len() >= 300
        })
        .await;
    let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "every event delivered");
    // At most the one in flight at the kill is delivered twice.
    assert!(got.len() <= 302, "{} deliveries of 300 events", got.len());
    let statuses = store.endpoint_statuses().await.unwrap();
    assert_eq!((statuses[0].pending, statuses[0].dead), (0, 0));
    assert_ne!(statuses[0].lease_owner, holder, "the survivor took over");
}

/// The README's Python receiver (the `standardwebhooks` package, an
/// implementation of the scheme that is not patd's) verifies real deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_python_receiver_verifies_deliveries() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```python\n# receiver.py")
        .expect("the README has the receiver");
    let code = &readme[start + "```python\n".len()..];
    let code = &code[..code.find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, code).unwrap();
    let port = crate::helpers::free_addr()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let mut receiver = std::process::Command::new("python3")
        .arg(&script)
        .arg(&port)
        .env("WEBHOOK_SECRET", crate::receiver::SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (pip install standardwebhooks)");
    let url = format!("http://127.0.0.1:{port}/patd");
    let app = spawn(
        Backend::Sqlite,
        settings(vec![endpoint("py", &url)], "1h", &[]),
    )
    .await
    .unwrap();
    let (_, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let stdout = receiver.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    });
    let line = tokio::time::timeout(WAIT, line).await;
    // The receiver answers 204 after printing: patd counts the delivery then.
    let deadline = tokio::time::Instant::now() + WAIT;
    let delivered = loop {
        let (scrape_now, _) = scrape(&app).await;
        let labels = [("endpoint", "py"), ("outcome", "delivered")];
        let delivered = value(&scrape_now, "patd_webhook_deliveries_total", &labels);
        if delivered >= 1.0 || tokio::time::Instant::now() > deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = receiver.kill();
    let output = receiver.wait_with_output().unwrap();
    let line = line
        .unwrap_or_else(|_| {
            panic!(
                "nothing verified: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .unwrap()
        .expect("a line")
        .unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    assert!(words[0].starts_with("evt_"), "{line}");
    assert_eq!(&words[1..], ["token.created", record.id.as_str()], "{line}");
    assert_eq!(delivered, 1.0, "answered 204 once verified");
}
