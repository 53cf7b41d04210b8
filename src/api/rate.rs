//! Rate limits for work that untrusted input can trigger (refusals to record,
//! leak reports to process): fixed windows, globally or per key, in bounded
//! memory.

/// At most `per_window` admissions in each `window` (a fixed window): cheap, and
/// enough to bound the cost of work triggered by untrusted input.
#[derive(Debug)]
pub struct RateLimit {
    per_window: u32,
    window: std::time::Duration,
    current: std::sync::Mutex<Window>,
}

/// One fixed window: when it started and how many it admitted; and how many
/// were refused since the last admission (across windows).
#[derive(Debug)]
struct Window {
    started: std::time::Instant,
    count: u32,
    refused: u32,
}

impl Window {
    fn new() -> Window {
        Window {
            started: std::time::Instant::now(),
            count: 0,
            refused: 0,
        }
    }

    /// `Some(refused before this one)` when admitted.
    fn admit(&mut self, per_window: u32, window: std::time::Duration) -> Option<u32> {
        if self.started.elapsed() >= window {
            *self = Window {
                refused: self.refused,
                ..Window::new()
            };
        }
        if self.count < per_window {
            self.count += 1;
            Some(std::mem::take(&mut self.refused))
        } else {
            self.refused = self.refused.saturating_add(1);
            None
        }
    }
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit::per(per_second, std::time::Duration::from_secs(1))
    }

    pub fn per(per_window: u32, window: std::time::Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            current: std::sync::Mutex::new(Window::new()),
        }
    }

    pub fn admit(&self) -> bool {
        let mut current = self.current.lock().expect("lock poisoned");
        current.admit(self.per_window, self.window).is_some()
    }
}

/// A [`RateLimit`] per key (a peer's address, say). Keys are forgotten when
/// their window has passed, and at most `max_keys` are tracked: beyond that,
/// new keys share one limit, so memory stays bounded under a spray of sources.
#[derive(Debug)]
pub struct KeyedRateLimit<K> {
    per_window: u32,
    window: std::time::Duration,
    max_keys: usize,
    keys: std::sync::Mutex<std::collections::HashMap<K, Window>>,
    overflow: RateLimit,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRateLimit<K> {
    pub fn new(per_window: u32, window: std::time::Duration, max_keys: usize) -> Self {
        KeyedRateLimit {
            per_window,
            window,
            max_keys,
            keys: std::sync::Mutex::default(),
            overflow: RateLimit::per(per_window, window),
        }
    }

    pub fn admit(&self, key: &K) -> bool {
        self.admit_noting(key).is_some()
    }

    /// Like [`KeyedRateLimit::admit`]; when admitted, how many of `key`'s were
    /// refused since its last admission (0 for keys in the overflow).
    pub fn admit_noting(&self, key: &K) -> Option<u32> {
        let mut keys = self.keys.lock().expect("lock poisoned");
        if !keys.contains_key(key) && keys.len() >= self.max_keys {
            let window = self.window;
            // Only a full table drops expired keys (and their unreported refusals).
            keys.retain(|_, current| current.started.elapsed() < window);
            if keys.len() >= self.max_keys {
                drop(keys);
                return self.overflow.admit().then_some(0);
            }
        }
        keys.entry(key.clone())
            .or_insert_with(Window::new)
            .admit(self.per_window, self.window)
    }

    /// Counts `count` more refusals for `key` (admitted here, refused by a
    /// later limit), to be reported with its next admission.
    pub fn note_refused(&self, key: &K, count: u32) {
        if let Some(window) = self.keys.lock().expect("lock poisoned").get_mut(key) {
            window.refused = window.refused.saturating_add(count);
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_window_admits_its_quota_then_refuses_until_the_next() {
        let limit = RateLimit::per(3, Duration::from_millis(50));
        assert_eq!((0..5).filter(|_| limit.admit()).count(), 3);
        std::thread::sleep(Duration::from_millis(60));
        assert!(limit.admit(), "a new window");
    }

    #[test]
    fn refusals_are_counted_until_the_next_admission() {
        let limit = KeyedRateLimit::new(1, Duration::from_millis(50), 10);
        assert_eq!(limit.admit_noting(&"a"), Some(0));
        assert_eq!(limit.admit_noting(&"a"), None);
        assert_eq!(limit.admit_noting(&"a"), None);
        limit.note_refused(&"a", 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limit.admit_noting(&"a"), Some(4), "kept across windows");
        assert_eq!(limit.admit_noting(&"b"), Some(0));
    }

    #[test]
    fn keys_have_their_own_quota_and_memory_stays_bounded() {
        let limit = KeyedRateLimit::new(2, Duration::from_secs(60), 3);
        assert!(limit.admit(&"a") && limit.admit(&"a") && !limit.admit(&"a"));
        assert!(limit.admit(&"b"), "another key is not limited by a's use");
        assert!(limit.admit(&"c"));
        // A fourth key while three are live shares the overflow quota.
        assert!(limit.admit(&"d") && limit.admit(&"e") && !limit.admit(&"f"));
        assert_eq!(limit.keys.lock().unwrap().len(), 3);
    }
}
