//! The Authenticator's coherence: one `WatchChanges` subscription, resumed
//! from its cursor after any interruption, dropping cached answers for every
//! token that changed; heartbeats keep the cache trusted.

use std::sync::Weak;
use std::time::Duration;

use tonic::Code;

use crate::authenticator::Inner;
use crate::proto::ChangeKind;

/// The subscription's task; it ends when this is dropped.
pub(crate) struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// The least time a stream may stay silent before it is abandoned: heartbeats
/// come every 500 ms.
const MIN_PATIENCE: Duration = Duration::from_secs(2);

/// Unreachable is ordinary (patd restarts); anything else (a credential not
/// admitted, a bad request) needs an operator, and is said louder.
fn log_failure(status: &tonic::Status, what: &str) {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::ResourceExhausted => {
            tracing::debug!(code = ?status.code(), message = status.message(), "{what}")
        }
        _ => tracing::warn!(code = ?status.code(), message = status.message(), "{what}"),
    }
}

pub(crate) fn spawn(inner: Weak<Inner>) -> Task {
    Task(tokio::spawn(follow(inner)))
}

async fn follow(inner: Weak<Inner>) {
    // Empty: from now (nothing is cached before the stream is heard from).
    let mut cursor = String::new();
    let mut pause = FIRST_RETRY;
    loop {
        let Some(client) = inner.upgrade().map(|inner| inner.client.clone()) else {
            return;
        };
        match client.watch_changes(&cursor).await {
            Ok(mut stream) => {
                // A stream that stays open but says nothing (patd's follower
                // stuck behind a live connection) is abandoned and resumed.
                let patience = inner.upgrade().map_or(MIN_PATIENCE, |inner| {
                    inner.max_staleness().max(MIN_PATIENCE)
                });
                loop {
                    let message = match tokio::time::timeout(patience, stream.message()).await {
                        Ok(message) => message,
                        Err(_) => {
                            tracing::warn!(
                                "patd change stream silent for {patience:?}; reconnecting"
                            );
                            break;
                        }
                    };
                    match message {
                        Ok(Some(change)) => {
                            let Some(inner) = inner.upgrade() else { return };
                            match change.kind() {
                                // Only a heartbeat says the stream is current:
                                // patd sends one only while it follows its log,
                                // and only after a resumed stream's backlog, so
                                // the cache is not trusted halfway through one.
                                ChangeKind::Heartbeat => inner.heard(),
                                _ if change.token_id.is_empty() => {
                                    // A change without a token id (an older log
                                    // row, an unknown kind): trust nothing cached.
                                    inner.clear();
                                }
                                _ => inner.invalidate(&change.token_id),
                            }
                            cursor = change.cursor;
                            pause = FIRST_RETRY;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            log_failure(&status, "patd change stream ended; resuming");
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == Code::OutOfRange => {
                // Changes since the cursor are gone: forget everything, start
                // from now.
                tracing::warn!("patd change stream could not resume: cache dropped");
                if let Some(inner) = inner.upgrade() {
                    inner.clear();
                }
                cursor.clear();
                continue;
            }
            Err(status) => log_failure(&status, "patd change stream refused; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LAST_RETRY);
    }
}
