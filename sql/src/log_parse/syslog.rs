//! `SYS_LOG_PARSE(line)`: a BSD syslog line (RFC 3164), `Mon DD HH:MM:SS host message`,
//! as two fields: `column1` the `TIMESTAMP`, `column2` the rest (`host message`). A leading
//! priority (`<34>`) is skipped.
//!
//! The line carries no year. It is the year, on the engine's clock, that puts the time
//! nearest before now: a line from `Dec 31 23:59:58` read on 1 January is last year's, and
//! one a week or more ahead of the clock is taken to be from the year before.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDateTime};
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// How far ahead of the clock a line's time may be (clocks drift) before it is read as
/// last year's.
const AHEAD_MS: i64 = 7 * 86_400_000;

/// The two fields.
pub fn fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "column1",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("column2", DataType::Utf8, true),
    ])
}

/// Reads `line` into `out` (the time as ISO text, the rest), with `now_ms` choosing the
/// year; false when the line does not start with a syslog time.
pub fn parse<'a>(line: &'a str, now_ms: i64, out: &mut [Option<Cow<'a, str>>]) -> bool {
    let mut rest = line.trim_start();
    if let Some((priority, after)) = rest.strip_prefix('<').and_then(|r| r.split_once('>'))
        && !priority.is_empty()
        && priority.bytes().all(|b| b.is_ascii_digit())
    {
        rest = after;
    }
    // `Oct 11 22:14:15`, the day padded with a blank (`Oct  1`) or not.
    let Some((month, after)) = token(rest) else {
        return false;
    };
    let Some((day, after)) = token(after) else {
        return false;
    };
    let Some((clock, message)) = token(after) else {
        return false;
    };
    let stamp = format!("{month} {day} {clock}");
    let Some(now) = DateTime::from_timestamp_millis(now_ms) else {
        return false;
    };
    let in_year = |year: i32| {
        NaiveDateTime::parse_from_str(&format!("{year} {stamp}"), "%Y %b %e %H:%M:%S").ok()
    };
    let time = match in_year(now.year()) {
        Some(t) if t.and_utc().timestamp_millis() <= now_ms + AHEAD_MS => Some(t),
        // Ahead of the clock, or 29 February in a year without one.
        _ => in_year(now.year() - 1),
    };
    let Some(time) = time else {
        return false;
    };
    if let [time_slot, message_slot, ..] = out {
        *time_slot = Some(Cow::Owned(time.format("%Y-%m-%dT%H:%M:%S").to_string()));
        *message_slot = Some(Cow::Borrowed(message.trim_start()));
    }
    true
}

/// The first blank-separated word of `text` and what follows it.
fn token(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or_default()
    }

    fn read(line: &str, now: &str) -> Option<(String, String)> {
        let mut out = vec![None, None];
        if !parse(line, at(now), &mut out) {
            return None;
        }
        Some((out[0].clone()?.into_owned(), out[1].clone()?.into_owned()))
    }

    #[test]
    fn a_line_splits_into_its_time_and_the_rest() {
        assert_eq!(
            read(
                "<34>Oct 11 22:14:15 mymachine su: 'su root' failed",
                "2026-10-12 08:00:00"
            ),
            Some((
                "2026-10-11T22:14:15".into(),
                "mymachine su: 'su root' failed".into()
            ))
        );
        assert_eq!(
            read("Feb  5 01:02:03 web-1 cron[12]: ok", "2026-02-05 02:00:00").map(|(t, _)| t),
            Some("2026-02-05T01:02:03".into())
        );
        assert_eq!(
            read("not a syslog line at all", "2026-01-01 00:00:00"),
            None
        );
        assert_eq!(read("Oct 11", "2026-01-01 00:00:00"), None);
        assert_eq!(
            read("Oct 1 01:00:00 h m", "2026-10-02 00:00:00").map(|(t, _)| t),
            Some("2026-10-01T01:00:00".into())
        );
    }

    #[test]
    fn the_year_is_the_one_that_puts_the_line_before_now() {
        // Read just after midnight on New Year's Day: last year's last second.
        assert_eq!(
            read("Dec 31 23:59:58 host m", "2026-01-01 00:00:10").map(|(t, _)| t),
            Some("2025-12-31T23:59:58".into())
        );
        // A few seconds ahead of the clock is this year's.
        assert_eq!(
            read("Mar  1 12:00:05 host m", "2026-03-01 12:00:00").map(|(t, _)| t),
            Some("2026-03-01T12:00:05".into())
        );
        // 29 February read in a year without one is the last leap year's... if that is
        // the year before; otherwise the line cannot be placed.
        assert_eq!(
            read("Feb 29 10:00:00 host m", "2025-03-01 00:00:00").map(|(t, _)| t),
            Some("2024-02-29T10:00:00".into())
        );
    }
}
