//! `WatchChanges`: one subscriber's stream. It starts from a cursor (the
//! backlog read once from the change log) or from now, then forwards what the
//! change feed publishes, with a heartbeat carrying the cursor while the
//! server is following the log. A subscriber that does not read in time, or
//! falls behind the feed's buffer, is disconnected; it resumes from its cursor.
//!
//! A cursor is a change-log mark (`store::ChangeMark`): resuming from it may
//! repeat the changes delivered with it, and never skips one. Within a read,
//! every change but the last carries the mark before the read; the last, the
//! mark after it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::requests::encode_change_cursor;
use crate::domain::clock;
use crate::metrics::{Metrics, WatchDisconnect};
use crate::proto;
use crate::store::{Backlog, Change, ChangeKind, ChangeMark};
use crate::verify::Verifier;
use crate::verify::feed::{Batch, ChangeFeed};

/// How often a subscriber hears that the stream is alive (at most 1 s, the
/// contract; consumers distrust their cache after 2 s by default).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Changes a resuming subscriber may be behind; beyond, it must start over.
pub const MAX_BACKLOG: usize = 100_000;
/// Messages queued for one subscriber before a send waits.
const SUBSCRIBER_QUEUE: usize = 64;
/// How long a send may wait for a slow subscriber before it is disconnected.
const SLOW_SUBSCRIBER: Duration = Duration::from_secs(2);

pub type ChangeStream = ReceiverStream<Result<proto::TokenChange, Status>>;

fn message(change: &Change, cursor: ChangeMark) -> proto::TokenChange {
    let kind = match change.kind {
        ChangeKind::Revoked => proto::ChangeKind::Revoked,
        ChangeKind::Deleted => proto::ChangeKind::Deleted,
        ChangeKind::Rotated => proto::ChangeKind::Rotated,
        ChangeKind::Suspended => proto::ChangeKind::Suspended,
        ChangeKind::Resumed => proto::ChangeKind::Resumed,
        ChangeKind::Updated => proto::ChangeKind::Updated,
        ChangeKind::Unknown => proto::ChangeKind::Unspecified,
    };
    proto::TokenChange {
        token_id: change.token_id.clone(),
        kind: kind.into(),
        at: Some(clock::to_timestamp(change.changed_at)),
        cursor: encode_change_cursor(cursor.to_i64()),
    }
}

fn heartbeat(cursor: ChangeMark) -> proto::TokenChange {
    proto::TokenChange {
        token_id: String::new(),
        kind: proto::ChangeKind::Heartbeat.into(),
        at: Some(clock::to_timestamp(clock::now_micros())),
        cursor: encode_change_cursor(cursor.to_i64()),
    }
}

/// Opens a subscription after `after` (a mark), or from now.
pub async fn subscribe(verifier: &Verifier, after: Option<i64>) -> Result<ChangeStream, Status> {
    let feed = verifier.feed().clone();
    if feed.is_closed() {
        return Err(shutting_down());
    }
    // Subscribed before the backlog is read: what commits in between is in
    // one or both, never in neither (duplicates are dropped by seq).
    let changes = feed.subscribe();
    let store = verifier.store();
    let (start, backlog) = match after {
        None => (store.current_mark().await?, None),
        Some(after) => match store
            .changes_after(ChangeMark::from_i64(after), MAX_BACKLOG)
            .await?
        {
            Backlog::Changes(changes, to) => {
                (ChangeMark::from_i64(after), Some(Batch { changes, to }))
            }
            Backlog::Pruned => {
                return Err(Status::out_of_range(
                    "changes after this cursor are no longer kept (the log keeps a day): drop \
                     every cached token and subscribe again without a cursor",
                ));
            }
            Backlog::TooLong => {
                return Err(Status::out_of_range(format!(
                    "more than {MAX_BACKLOG} changes since this cursor: drop every cached token \
                     and subscribe again without a cursor"
                )));
            }
        },
    };
    let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    let metrics = verifier.metrics().clone();
    metrics.record_watch_subscribers(1);
    tokio::spawn(async move {
        let subscriber = Subscriber {
            tx,
            metrics: metrics.clone(),
            cursor: start,
            delivered: HashSet::new(),
        };
        subscriber.run(feed, changes, backlog).await;
        metrics.record_watch_subscribers(-1);
    });
    Ok(ReceiverStream::new(rx))
}

fn shutting_down() -> Status {
    Status::unavailable("the server is shutting down: resume from your cursor on another")
}

struct Subscriber {
    tx: mpsc::Sender<Result<proto::TokenChange, Status>>,
    metrics: std::sync::Arc<Metrics>,
    /// Where this subscriber is: the cursor of the last message sent.
    cursor: ChangeMark,
    /// The backlog's changes, which the first live reads may repeat.
    delivered: HashSet<i64>,
}

/// Why a subscription ends.
enum End {
    /// The subscriber went away (or was too slow, already counted).
    Gone,
    /// The server ends it, saying why.
    Refused(Status, WatchDisconnect),
}

impl Subscriber {
    async fn run(
        mut self,
        feed: ChangeFeed,
        mut changes: broadcast::Receiver<Arc<Batch>>,
        backlog: Option<Batch>,
    ) {
        let end = self.serve(&feed, &mut changes, backlog).await;
        if let End::Refused(status, why) = end {
            self.metrics.record_watch_disconnect(why);
            // Best effort: a subscriber with a full queue is gone anyway.
            let _ = self.tx.try_send(Err(status));
        }
    }

    async fn serve(
        &mut self,
        feed: &ChangeFeed,
        changes: &mut broadcast::Receiver<Arc<Batch>>,
        backlog: Option<Batch>,
    ) -> End {
        if let Some(backlog) = backlog {
            if let Err(end) = self.send_batch(&backlog).await {
                return end;
            }
            self.delivered = backlog.changes.iter().map(|change| change.seq).collect();
        }
        let mut positions = feed.positions();
        let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = changes.recv() => match received {
                    Ok(batch) => {
                        if let Err(end) = self.send_batch(&batch).await {
                            return end;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return End::Refused(
                            Status::resource_exhausted(
                                "this subscriber fell too far behind: resume from your cursor",
                            ),
                            WatchDisconnect::Lagged,
                        );
                    }
                    Err(broadcast::error::RecvError::Closed) => return End::Gone,
                },
                _ = ticker.tick() => {
                    if feed.is_closed() {
                        return End::Refused(shutting_down(), WatchDisconnect::Shutdown);
                    }
                    // The position first: every change the feed published up to
                    // it is then in `changes` already. Delivered those, the
                    // cursor may move up to the position.
                    let position = *positions.borrow_and_update();
                    loop {
                        match changes.try_recv() {
                            Ok(batch) => {
                                if let Err(end) = self.send_batch(&batch).await {
                                    return end;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                return End::Refused(
                                    Status::resource_exhausted(
                                        "this subscriber fell too far behind: resume from your cursor",
                                    ),
                                    WatchDisconnect::Lagged,
                                );
                            }
                            Err(_) => break,
                        }
                    }
                    // No heartbeat while the server is not following the log:
                    // the subscriber must not go on trusting its cache.
                    if let Some(position) = position.filter(|p| feed.is_fresh(p)) {
                        self.cursor = self.cursor.max(position.mark);
                        if let Err(end) = self.send(heartbeat(self.cursor)).await {
                            return end;
                        }
                    }
                }
                _ = positions.changed() => {
                    if feed.is_closed() {
                        return End::Refused(shutting_down(), WatchDisconnect::Shutdown);
                    }
                }
            }
        }
    }

    /// Sends a read's changes: each but the last with the cursor from before
    /// the read, the last with the mark after it.
    async fn send_batch(&mut self, batch: &Batch) -> Result<(), End> {
        let fresh: Vec<&Change> = batch
            .changes
            .iter()
            .filter(|change| !self.delivered.contains(&change.seq))
            .collect();
        let after = self.cursor.max(batch.to);
        for (index, change) in fresh.iter().enumerate() {
            let cursor = if index + 1 == fresh.len() {
                after
            } else {
                self.cursor
            };
            self.send(message(change, cursor)).await?;
            self.metrics.record_watch_change_sent();
        }
        self.cursor = after;
        Ok(())
    }

    async fn send(&self, message: proto::TokenChange) -> Result<(), End> {
        match tokio::time::timeout(SLOW_SUBSCRIBER, self.tx.send(Ok(message))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.metrics.record_watch_disconnect(WatchDisconnect::Slow);
                Err(End::Gone)
            }
        }
    }
}
