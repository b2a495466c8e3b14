//! The status line of a continuous query that has not printed a row yet: how many records it
//! has read, its watermark, and when its first window can close, so a query that waits for
//! time to pass is not taken for one that is stuck.

use std::time::Duration;

use sluice_sql::continuous::QueryProgress;

/// How long a continuous query may stay silent before the status line first shows.
pub const FIRST_STATUS_AFTER: Duration = Duration::from_secs(2);

/// How often the status line is refreshed while the query stays silent.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// What a continuous query that has printed nothing yet is waiting for.
pub fn waiting_status(progress: Option<&QueryProgress>) -> String {
    let Some(progress) = progress else {
        return "(waiting for rows; the server sends them as they are produced; Ctrl-C stops)"
            .to_string();
    };
    let read = progress.rows_in();
    if read == 0 {
        return "(waiting: no records read yet; rows show as records arrive in the stream; Ctrl-C stops)"
            .to_string();
    }
    let records = if read == 1 { "record" } else { "records" };
    let mut line = format!("(waiting: {read} {records} read");
    match (progress.watermark_ms(), progress.next_close_ms()) {
        (watermark, Some(close)) => {
            match watermark {
                Some(watermark) => line.push_str(&format!(", watermark {}", time(watermark))),
                None => line.push_str(", no watermark yet"),
            }
            line.push_str(&format!(
                "; the first window's rows come out once the watermark passes {}, which takes records with later times",
                time(close)
            ));
        }
        (Some(watermark), None) => {
            line.push_str(&format!(", watermark {}; no window open", time(watermark)));
        }
        (None, None) => line.push_str(", none has produced a row yet"),
    }
    let late = progress.late_rows();
    if late > 0 {
        line.push_str(&format!("; {late} dropped as late"));
    }
    line.push_str("; Ctrl-C stops)");
    line
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_that_read_nothing_says_so() {
        let progress = QueryProgress::default();
        assert!(waiting_status(Some(&progress)).contains("no records read yet"));
        assert!(waiting_status(None).contains("waiting for rows"));
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(time(1_767_261_720_000), "2026-01-01 10:02:00.000");
    }
}
