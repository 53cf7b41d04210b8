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

/// RFC 3339 to the microsecond (event times, where order within a second matters).
pub fn rfc3339_micros(micros: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
    humantime::format_rfc3339_micros(time).to_string()
}

/// A duration from configuration (`key` names the setting in the message).
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| {
        format!(
            "{key} is not a duration like \"10s\" or \"1m\": {}",
            duration_error(&err)
        )
    })
}

/// What is wrong with a duration, without quoting it (humantime's own text
/// repeats the value): whatever was typed there stays out of logs.
pub fn duration_error(err: &humantime::DurationError) -> String {
    use humantime::DurationError;
    match err {
        DurationError::InvalidCharacter(at) => format!("invalid character at position {at}"),
        DurationError::NumberExpected(at) => format!("expected a number at position {at}"),
        DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a unit is needed after the number (ms, s, m, h, d, …)".to_owned()
        }
        DurationError::UnknownUnit { .. } => {
            "unknown unit (known: ns, us, ms, s, m, h, d, w, M, y)".to_owned()
        }
        DurationError::NumberOverflow => "the number is too large".to_owned(),
        DurationError::Empty => "it is empty".to_owned(),
    }
}

#[cfg(test)]
mod tests {

    /// Found by the `duration` fuzz target: humantime's message repeats the
    /// value ("time unit needed, for example 6622sec"); ours does not.
    #[test]
    fn duration_errors_do_not_repeat_the_value() {
        for (text, reason) in [
            ("6622", "a unit is needed"),
            ("10 parsecs", "unknown unit"),
            ("soon", "expected a number"),
            ("", "empty"),
        ] {
            let err = parse_duration("shutdown_grace", text).unwrap_err();
            assert!(err.starts_with("shutdown_grace is not a duration"), "{err}");
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(text.is_empty() || !err.contains(text), "{text:?}: {err}");
        }
        assert_eq!(parse_duration("k", "1m 30s"), Ok(Duration::from_secs(90)));
    }

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
