//! Sequence numbers: decimal strings that increase per shard and say which shard they belong to.
//!
//! Kinesis sequence numbers are opaque decimal strings. Ours are 30 digits: `49`, the shard's
//! index in 8 digits, then a per-shard counter in 20 digits. Fixed width means that comparing two
//! sequence numbers of a shard as strings gives the same order as comparing them as numbers, and
//! a reader handed a sequence number can tell at once whether it belongs to the shard it asked for.

use crate::error::{Error, Result};

/// The decimal string form of sequence number `counter` in shard `shard_index`.
pub fn format_sequence_number(shard_index: u32, counter: u64) -> String {
    let mut text = [0u8; SEQUENCE_NUMBER_LEN];
    write_sequence_number(&mut text, shard_index, counter);
    String::from_utf8_lossy(&text).into_owned()
}

/// The length of every sequence number.
pub const SEQUENCE_NUMBER_LEN: usize = 30;

/// Writes the sequence number of (`shard_index`, `counter`) into `out`, without allocating:
/// readers derive one per record.
pub fn write_sequence_number(out: &mut [u8; SEQUENCE_NUMBER_LEN], shard_index: u32, counter: u64) {
    out[0] = b'4';
    out[1] = b'9';
    write_digits(&mut out[2..10], u64::from(shard_index) % 100_000_000);
    write_digits(&mut out[10..30], counter);
}

/// `value` as decimal digits, zero-padded to fill `out`.
fn write_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Splits a sequence number into its shard index and per-shard counter.
pub fn parse_sequence_number(text: &str) -> Result<(u32, u64)> {
    let invalid = || {
        Error::InvalidArgument(format!(
            "'{text}' is not a Sluice sequence number (30 decimal digits starting with 49)"
        ))
    };
    if text.len() != 30 || !text.starts_with("49") || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let shard = text[2..10].parse::<u32>().map_err(|_| invalid())?;
    let counter = text[10..].parse::<u64>().map_err(|_| invalid())?;
    Ok((shard, counter))
}

/// The Kinesis-style name of shard `index`: `shardId-000000000003`.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// Parses `shardId-000000000003` (or a bare index) back into the shard index.
pub fn parse_shard_id(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("shardId-").unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_round_trip_and_sort_as_strings() {
        let a = format_sequence_number(3, 9);
        let b = format_sequence_number(3, 10);
        assert_eq!(a.len(), 30);
        assert!(a < b);
        assert_eq!(parse_sequence_number(&b).ok(), Some((3, 10)));
        assert_eq!(a.parse::<u128>().ok().map(|n| n > 0), Some(true));
        assert_eq!(a, "490000000300000000000000000009");
        let max = format_sequence_number(1023, u64::MAX);
        assert_eq!(max, "490000102318446744073709551615");
        assert_eq!(parse_sequence_number(&max).ok(), Some((1023, u64::MAX)));
    }

    #[test]
    fn foreign_sequence_numbers_are_refused() {
        assert!(parse_sequence_number("123").is_err());
        assert!(parse_sequence_number("4900000003000000000000000000x1").is_err());
        assert!(parse_sequence_number("590000000300000000000000000001").is_err());
    }

    #[test]
    fn shard_ids_look_like_kinesis() {
        assert_eq!(shard_id(3), "shardId-000000000003");
        assert_eq!(parse_shard_id("shardId-000000000003"), Some(3));
        assert_eq!(parse_shard_id("7"), Some(7));
        assert_eq!(parse_shard_id("shard-x"), None);
    }
}
