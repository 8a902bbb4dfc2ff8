//! The text form of instants where they are stored as text: SQLite's columns (UTC, microseconds,
//! fixed width: `2026-11-20T08:15:02.123456Z`, so that they compare correctly as strings) and the
//! reservation filter both backends share. PostgreSQL binds and reads `timestamptz` as `time`
//! values directly (tokio-postgres' `with-time-0_3`).

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

use super::StoreError;

const UTC_MICROS: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// `t` in UTC, microsecond precision, fixed width.
pub fn format_utc(t: OffsetDateTime) -> String {
    let utc = t.to_offset(UtcOffset::UTC);
    // Only years outside 0..=9999 fail to format; clamp rather than fail a request over a clock.
    utc.format(UTC_MICROS)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.999999Z".to_string())
}

/// Reads what [`format_utc`] wrote.
pub fn parse_utc(text: &str) -> Result<OffsetDateTime, StoreError> {
    PrimitiveDateTime::parse(text, UTC_MICROS)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|_| StoreError::Corrupt {
            column: "timestamp",
            value: text.to_string(),
        })
}

/// Truncates to what the databases keep, so values read back compare equal.
pub(crate) fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn round_trips_at_microsecond_precision() {
        let t = datetime!(2026-11-20 08:15:02.123456789 +01:00);
        let text = format_utc(t);
        assert_eq!(text, "2026-11-20T07:15:02.123456Z");
        assert_eq!(parse_utc(&text).unwrap(), to_micros(t));
    }

    #[test]
    fn text_order_is_time_order() {
        let early = format_utc(datetime!(2026-01-02 03:04:05.000001 UTC));
        let late = format_utc(datetime!(2026-01-02 03:04:05.000010 UTC));
        assert!(early < late);
    }

    #[test]
    fn garbage_is_reported() {
        assert!(parse_utc("yesterday").is_err());
    }
}
