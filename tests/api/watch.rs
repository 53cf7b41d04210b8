//! WatchChanges: every revoke, delete, rotation, suspension and resumption, in commit order, with
//! heartbeats; resumable from a cursor without gaps or repeats; bounded per
//! subscriber; admitted as Introspect is.

use std::time::{Duration, Instant};

use patd::domain::model::{Actor, Owner, TokenSpec, parse_scopes};
use patd::proto::introspection_service_client::IntrospectionServiceClient;
use patd::proto::{ChangeKind, RotateTokenRequest, TokenChange, WatchChangesRequest};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::backend_tests;
use crate::helpers::{TestApp, authed, revoke_as_operator};

pub async fn watch(app: &TestApp, after: &str) -> Result<Streaming<TokenChange>, tonic::Status> {
    let mut client = IntrospectionServiceClient::new(app.channel().await);
    client
        .watch_changes(WatchChangesRequest {
            after: after.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The next message that is not a heartbeat, within `within`.
pub async fn next_change(stream: &mut Streaming<TokenChange>, within: Duration) -> TokenChange {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, stream.message())
            .await
            .expect("a change in time")
            .expect("the stream is healthy")
            .expect("the stream is open");
        if message.kind() != ChangeKind::Heartbeat {
            return message;
        }
    }
}

async fn next_heartbeat(stream: &mut Streaming<TokenChange>) -> TokenChange {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .expect("a heartbeat within a second or so")
            .unwrap()
            .unwrap();
        if message.kind() == ChangeKind::Heartbeat {
            return message;
        }
    }
}

async fn revokes_rotations_deletes_and_suspensions_arrive_in_commit_order(app: TestApp) {
    let mut stream = watch(&app, "").await.unwrap();
    let first = next_heartbeat(&mut stream).await;
    assert!(first.token_id.is_empty() && first.at.is_some());
    let manager = app.manager("alice", &["tag:read"]).await;
    let (_, revoked) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (_, rotated) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let (_, deleted) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    let mut tokens = app.tokens().await;
    revoke_as_operator(&app.store, &revoked).await;
    tokens
        .rotate_token(authed(
            &manager,
            RotateTokenRequest {
                id: rotated.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    tokens
        .delete_token(authed(
            &manager,
            patd::proto::DeleteTokenRequest {
                id: deleted.id.clone(),
            },
        ))
        .await
        .unwrap();
    let (_, suspended) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    for suspend in [true, false] {
        let id = suspended.id.clone();
        if suspend {
            let request = patd::proto::SuspendTokenRequest { id };
            tokens
                .suspend_token(authed(&manager, request))
                .await
                .unwrap();
        } else {
            let request = patd::proto::ResumeTokenRequest { id };
            tokens
                .resume_token(authed(&manager, request))
                .await
                .unwrap();
        }
    }
    // A rename (Introspect answers carry the name); a relabel alone is no change.
    for (path, name, labels) in [
        ("name", "renamed", vec![]),
        ("labels", "", vec![("k", "v")]),
    ] {
        let request = patd::proto::UpdateTokenRequest {
            id: suspended.id.clone(),
            token: Some(patd::proto::Token {
                name: name.to_owned(),
                labels: labels
                    .into_iter()
                    .map(|(k, v): (&str, &str)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![path.to_owned()],
            }),
        };
        tokens
            .update_token(authed(&manager, request))
            .await
            .unwrap();
    }
    let (_, last) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    revoke_as_operator(&app.store, &last).await;
    let mut cursors = vec![first.cursor.clone()];
    for (id, kind) in [
        (&revoked.id, ChangeKind::Revoked),
        (&rotated.id, ChangeKind::Rotated),
        (&deleted.id, ChangeKind::Deleted),
        (&suspended.id, ChangeKind::Suspended),
        (&suspended.id, ChangeKind::Resumed),
        (&suspended.id, ChangeKind::Updated),
        (&last.id, ChangeKind::Revoked),
    ] {
        let change = next_change(&mut stream, Duration::from_secs(3)).await;
        assert_eq!(
            (change.token_id.as_str(), change.kind()),
            (id.as_str(), kind)
        );
        assert!(change.at.is_some());
        cursors.push(change.cursor);
    }
    let seq = |cursor: &str| patd::api::requests::decode_change_cursor(cursor).unwrap();
    let seqs: Vec<i64> = cursors.iter().map(|c| seq(c)).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] <= w[1]),
        "cursors never go back: {seqs:?}"
    );
    // Heartbeats then carry a cursor past the changes (on Postgres, once no
    // older transaction in the cluster holds the horizon back).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let beat = seq(&next_heartbeat(&mut stream).await.cursor);
        assert!(beat >= seqs[7], "a heartbeat went back: {beat} < {seqs:?}");
        if beat > seqs[0] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cursor never moved on: {seqs:?}"
        );
    }
}

async fn a_resumed_stream_gets_every_change_since_its_cursor_once(app: TestApp) {
    let mut stream = watch(&app, "").await.unwrap();
    let start = next_heartbeat(&mut stream).await.cursor;
    drop(stream);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let (_, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
        revoke_as_operator(&app.store, &record).await;
        ids.push(record.id);
    }
    let mut resumed = watch(&app, &start).await.unwrap();
    let mut got = Vec::new();
    let mut cursors = Vec::new();
    for _ in 0..5 {
        let change = next_change(&mut resumed, Duration::from_secs(3)).await;
        got.push(change.token_id);
        cursors.push(change.cursor);
    }
    assert_eq!(got, ids, "every change, in commit order");
    assert_no_new_changes(&app, &mut resumed, &ids).await;
    // From the last change's cursor: nothing new.
    let mut after_last = watch(&app, &cursors[4]).await.unwrap();
    assert_no_new_changes(&app, &mut after_last, &ids).await;
    // From an earlier one: what follows it, perhaps with repeats of what came
    // with that cursor, never with a gap.
    let mut later = watch(&app, &cursors[2]).await.unwrap();
    let mut again = Vec::new();
    while again.len() < 5 && !again.ends_with(&ids[3..]) {
        again.push(
            next_change(&mut later, Duration::from_secs(3))
                .await
                .token_id,
        );
    }
    assert!(again.ends_with(&ids[3..]), "{again:?}");
    assert!(again.iter().all(|id| ids.contains(id)), "{again:?}");
}

/// Up to the next heartbeat, nothing but (on Postgres) repeats of `known`: a
/// Postgres cursor is a transaction horizon, which another transaction anywhere
/// in the cluster can hold back, so resuming may repeat what came with it. On
/// SQLite a cursor is exact.
async fn assert_no_new_changes(
    app: &TestApp,
    stream: &mut Streaming<TokenChange>,
    known: &[String],
) {
    let mut repeats = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(3), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.kind() == ChangeKind::Heartbeat {
            break;
        }
        assert!(
            known.contains(&message.token_id),
            "a change never made: {message:?}"
        );
        repeats.push(message.token_id);
    }
    if app.backend == crate::helpers::Backend::Sqlite {
        assert!(
            repeats.is_empty(),
            "an exact cursor repeats nothing: {repeats:?}"
        );
    }
}

async fn cursors_are_checked_and_old_ones_are_out_of_range(app: TestApp) {
    let err = watch(&app, "not a cursor").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let (_, record) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    revoke_as_operator(&app.store, &record).await;
    let pruned = app
        .store
        .prune_changes(patd::domain::clock::now_micros() + 1_000_000)
        .await
        .unwrap();
    assert!(pruned >= 1);
    let err = watch(&app, "c1.0").await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("drop every cached token"),
        "{}",
        err.message()
    );
    // From now still works.
    let mut stream = watch(&app, "").await.unwrap();
    next_heartbeat(&mut stream).await;
}

/// A subscriber that stops reading is disconnected; the others, and Introspect,
/// carry on unaffected.
async fn a_subscriber_that_stops_reading_is_cut_off_alone(app: TestApp) {
    let (active, _) = app.mint(("alice", "acme"), &["tag:read"], None).await;
    // A small HTTP/2 window, so that what it does not read backs up to the
    // server soon (the default would buffer 2 MB in the client).
    let stalled_channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(4096))
        .initial_connection_window_size(Some(4096))
        .connect()
        .await
        .unwrap();
    let mut stalled = IntrospectionServiceClient::new(stalled_channel)
        .watch_changes(WatchChangesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut reader = watch(&app, "").await.unwrap();
    next_heartbeat(&mut reader).await;
    next_heartbeat(&mut stalled).await;
    // 2,000 changes in one statement: more than the stalled subscriber's HTTP/2
    // window and queue can hold.
    let owner = Owner::new("bulk", "acme").unwrap();
    let scopes = parse_scopes(&["tag:read".to_owned()]).unwrap();
    let tokens: Vec<_> = (0..2_000)
        .map(|_| {
            TokenSpec {
                name: "bulk",
                scopes,
                expires_at: None,
                allowed_cidrs: Default::default(),
                description: String::new(),
                labels: Default::default(),
                resources: Default::default(),
            }
            .issue(
                &app.format,
                owner.clone(),
                patd::domain::clock::now_micros(),
            )
            .unwrap()
            .0
        })
        .collect();
    app.store
        .insert_many(&tokens, Some(&Actor::operator()), None)
        .await
        .unwrap();

    app.execute_raw(
        "UPDATE tokens SET revoked_at = 1 WHERE subject = $1",
        &["bulk"],
    )
    .await;
    let mut received = 0;
    while received < 2_000 {
        next_change(&mut reader, Duration::from_secs(10)).await;
        received += 1;

        if received % 500 == 0 {
            assert!(app.is_active(&active).await, "Introspect answers meanwhile");
        }
    }
    // The stalled one is cut off (after its sends waited 2 s): reading it now
    // ends before all 2,000 changes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stalled_got = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the stalled stream goes on");
        match tokio::time::timeout(Duration::from_secs(5), stalled.message()).await {
            Ok(Ok(Some(change))) if change.kind() != ChangeKind::Heartbeat => stalled_got += 1,
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("the stalled stream was not ended"),
        }
    }
    assert!(
        stalled_got < 2_000,
        "the stalled subscriber was disconnected"
    );
    let (scrape, _) = crate::metrics::scrape(&app).await;
    assert_eq!(
        crate::metrics::value(
            &scrape,
            "patd_watch_disconnects_total",
            &[("reason", "slow")]
        ),
        1.0
    );
    assert!(crate::metrics::value(&scrape, "patd_watch_changes_sent_total", &[]) >= 2_000.0);
}

async fn only_trusted_callers_may_watch_when_so_configured(app: TestApp) {
    let err = watch(&app, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut client = IntrospectionServiceClient::new(app.channel().await);
    let stream = client
        .watch_changes(authed(
            crate::tls::portal_credential(),
            WatchChangesRequest::default(),
        ))
        .await;
    assert!(stream.is_ok());
}

fn trusted_only() -> patd::serve::ServerSettings {
    crate::tls::introspection_for_trusted_only()
}

async fn shutdown_ends_streams_so_subscribers_move_on(app: TestApp) {
    let mut stream = watch(&app, "").await.unwrap();
    next_heartbeat(&mut stream).await;
    let stopping = tokio::spawn(app.stop());
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends at once, not at the end of the grace period");
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(_)) => unreachable!(),
    }
    stopping.await.unwrap().unwrap();
}

backend_tests!(
    revokes_rotations_deletes_and_suspensions_arrive_in_commit_order,
    a_resumed_stream_gets_every_change_since_its_cursor_once,
    cursors_are_checked_and_old_ones_are_out_of_range,
    a_subscriber_that_stops_reading_is_cut_off_alone,
    only_trusted_callers_may_watch_when_so_configured with trusted_only,
    shutdown_ends_streams_so_subscribers_move_on,
);
