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
                loop {
                    match stream.message().await {
                        Ok(Some(change)) => {
                            let Some(inner) = inner.upgrade() else { return };
                            if change.kind() != ChangeKind::Heartbeat && !change.token_id.is_empty()
                            {
                                inner.invalidate(&change.token_id);
                            } else if change.kind() == ChangeKind::Unspecified {
                                // A change of unknown kind, from an older log
                                // row without a token id: trust nothing cached.
                                inner.clear();
                            }
                            inner.heard();
                            cursor = change.cursor;
                            pause = FIRST_RETRY;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "patd change stream ended; resuming");
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
            Err(status) => {
                tracing::debug!(%status, "patd change stream unavailable; retrying");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LAST_RETRY);
    }
}
