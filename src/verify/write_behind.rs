//! Write-behind of last use: uses are recorded in memory on the hot path and
//! written in one statement per flush, each token at most once an interval.

use std::time::{Duration, Instant};

use crate::store::StoreResult;

use super::Verifier;

impl Verifier {
    /// Writes the last use of every token used since the previous flush, one row
    /// per token. On failure the tokens stay queued for the next flush.
    /// Waits until no flush is running and keeps the next from starting while
    /// the guard lives: the write-behind task can then be stopped without losing
    /// a batch it had taken.
    pub async fn pause_flushes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.flushing.lock().await
    }

    pub async fn flush_last_used(&self) -> StoreResult<usize> {
        let inner = &*self.inner;
        let _flushing = inner.flushing.lock().await;
        let used = std::mem::take(&mut *inner.used.lock().expect("lock poisoned"));
        let uses: Vec<(i64, i64, Option<String>)> = used
            .iter()
            .map(|(&seq, queued)| {
                let client = queued.client.map(|ip| ip.to_string());
                (seq, queued.token.dequeue(), client)
            })
            .collect();
        if uses.is_empty() {
            return Ok(0);
        }
        if let Err(err) = inner.store.record_last_used(&uses).await {
            let mut queue = inner.used.lock().expect("lock poisoned");
            for (seq, queued) in used {
                if queued.token.mark_queued() {
                    queue.entry(seq).or_insert(queued);
                }
            }
            return Err(err);
        }
        Ok(uses.len())
    }

    /// Flushes `last_used_at` every `interval`, forever.
    pub async fn write_behind(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let started = Instant::now();
            match self.flush_last_used().await {
                Ok(0) => {}
                Ok(written) => {
                    tracing::info!(written, elapsed = ?started.elapsed(), "last_used_at flushed")
                }
                Err(err) => tracing::warn!(error = %err, "last_used_at flush failed; will retry"),
            }
        }
    }
}
