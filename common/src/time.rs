//! Unix milliseconds (Clerk's unit, and the directory's) ⇄ protobuf
//! `Timestamp` (the API's), in one place so every side rounds alike,
//! including before 1970.

use prost_types::Timestamp;

/// Converts Unix milliseconds (possibly negative) to a protobuf timestamp.
pub fn timestamp_from_millis(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Converts a protobuf timestamp to Unix milliseconds (sub-millisecond
/// nanos truncated); `None` when `nanos` is outside 0..1e9 or the time does
/// not fit an `i64` of milliseconds.
pub fn millis_from_timestamp(ts: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(ts.nanos) / 1_000_000)
}

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_and_timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_000, 1_700_000_000_123, -1, -999, -1_001] {
            let ts = timestamp_from_millis(ms);
            assert!((0..1_000_000_000).contains(&ts.nanos), "{ms}: {ts:?}");
            assert_eq!(millis_from_timestamp(&ts), Some(ms));
        }
        assert_eq!(
            timestamp_from_millis(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }

    #[test]
    fn timestamps_that_do_not_fit_are_refused() {
        let nanos = |nanos| Timestamp { seconds: 1, nanos };
        assert_eq!(millis_from_timestamp(&nanos(-1)), None);
        assert_eq!(millis_from_timestamp(&nanos(1_000_000_000)), None);
        let far = Timestamp {
            seconds: i64::MAX / 10,
            nanos: 0,
        };
        assert_eq!(millis_from_timestamp(&far), None);
        assert_eq!(millis_from_timestamp(&nanos(1_500_000)), Some(1_001));
    }
}
