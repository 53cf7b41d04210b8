//! Time as stored: microseconds since the Unix epoch in an `i64`, the same on both
//! backends, converted to `google.protobuf.Timestamp` at the edge.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 9999-12-31T23:59:59Z, the last second RFC 3339 (and so grpcurl) can write.
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn now_micros() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("system clock is before 1970");
    i64::try_from(since_epoch.as_micros()).expect("system clock is past year 294,000")
}

pub fn to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Microseconds for a timestamp between 1970 and year 9999 with valid nanos;
/// anything else is `None`. Sub-microsecond precision is dropped.
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<i64> {
    if !(0..=MAX_SECONDS).contains(&timestamp.seconds)
        || !(0..1_000_000_000).contains(&timestamp.nanos)
    {
        return None;
    }
    Some(timestamp.seconds * 1_000_000 + i64::from(timestamp.nanos / 1_000))
}

/// RFC 3339 text for logs, messages and the CLI.
pub fn rfc3339(micros: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_at_microsecond_precision() {
        for micros in [0, 1, 999_999, 1_000_000, 1_764_000_000_123_456] {
            assert_eq!(from_timestamp(&to_timestamp(micros)), Some(micros));
        }
    }

    #[test]
    fn out_of_range_timestamps_are_refused() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(from_timestamp(&ts(-1, 0)), None);
        assert_eq!(from_timestamp(&ts(MAX_SECONDS + 1, 0)), None);
        assert_eq!(from_timestamp(&ts(i64::MAX, 0)), None);
        assert_eq!(from_timestamp(&ts(0, -1)), None);
        assert_eq!(from_timestamp(&ts(0, 1_000_000_000)), None);
        assert_eq!(
            from_timestamp(&ts(MAX_SECONDS, 999_999_999)),
            Some(MAX_SECONDS * 1_000_000 + 999_999)
        );
    }

    #[test]
    fn rfc3339_formats_seconds() {
        assert_eq!(rfc3339(1_000_000), "1970-01-01T00:00:01Z");
    }
}
