//! Dates as the Tracker API writes them: `YYYY-MM-DDThh:mm:ss.sss+0000`, stored as UTC milliseconds.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// Milliseconds since the Unix epoch, UTC: how every timestamp is stored.
pub type Millis = i64;

/// The current time in milliseconds.
pub fn now_ms() -> Millis {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Formats as `2014-06-18T12:06:02.401+0000`.
pub fn format_ms(ms: Millis) -> String {
    let dt =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000");
    dt.format(&fmt).unwrap_or_default()
}

/// Formats like [`format_ms`] when displayed, without allocating (for serialisers that write straight into the
/// output). Years outside 0..=9999 fall back to [`format_ms`].
pub struct Formatted(pub Millis);

impl std::fmt::Display for Formatted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if !(0..=9999).contains(&dt.year()) {
            return f.write_str(&format_ms(self.0));
        }
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }
}

/// Parses the Tracker format (`±hhmm` offset, with or without milliseconds) or RFC 3339.
pub fn parse(s: &str) -> Option<Millis> {
    let s = s.trim();
    let dt = OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| parse_tracker(s))?;
    let ms = dt.unix_timestamp_nanos() / 1_000_000;
    i64::try_from(ms).ok()
}

fn parse_tracker(s: &str) -> Option<OffsetDateTime> {
    // `time` has no single description for "±hhmm without a colon, optional fraction", so split the offset off.
    if s.len() < 6 {
        return None;
    }
    let (body, off) = s.split_at(s.len() - 5);
    let sign = match off.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if !off[1..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hh: i32 = off[1..3].parse().ok()?;
    let mm: i32 = off[3..5].parse().ok()?;
    let offset = UtcOffset::from_whole_seconds(sign * (hh * 3600 + mm * 60)).ok()?;
    let with_frac = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
    let without = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let naive = PrimitiveDateTime::parse(body, &with_frac)
        .or_else(|_| PrimitiveDateTime::parse(body, &without))
        .ok()?;
    Some(naive.assume_offset(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_and_a_colonless_utc_offset() {
        assert_eq!(format_ms(1_403_093_162_401), "2014-06-18T12:06:02.401+0000");
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000+0000");
    }

    #[test]
    fn the_allocation_free_form_writes_what_format_ms_writes() {
        for ms in [
            0,
            1,
            999,
            1_403_093_162_401,
            -1,
            -86_400_001,
            253_402_300_799_999,
            1_795_000_000_123,
        ] {
            assert_eq!(Formatted(ms).to_string(), format_ms(ms), "{ms}");
        }
    }

    #[test]
    fn parses_the_tracker_format_and_rfc3339_alike() {
        assert_eq!(parse("2014-06-18T12:06:02.401+0000"), Some(1_403_093_162_401));
        assert_eq!(parse("2014-06-18T15:06:02.401+0300"), Some(1_403_093_162_401));
        assert_eq!(parse("2014-06-18T12:06:02.401Z"), Some(1_403_093_162_401));
        assert_eq!(parse("2014-06-18T12:06:02+00:00"), Some(1_403_093_162_000));
        assert_eq!(parse("2014-06-18T12:06:02+0000"), Some(1_403_093_162_000));
    }

    #[test]
    fn rejects_what_is_not_a_date() {
        for bad in [
            "",
            "yesterday",
            "2014-13-01T00:00:00.000+0000",
            "2014-06-18",
            "2014-06-18T12:06:02.401+00x0",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_through_the_format() {
        for ms in [0, 1, 999, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse(&format_ms(ms)), Some(ms));
        }
    }
}
