//! Routing records to shards: Kinesis's MD5 hash keys and hash-key ranges.
//!
//! A record's hash key is the MD5 digest of its UTF-8 partition key read as an unsigned 128-bit
//! big-endian integer, unless the producer gives an explicit hash key. A stream created with N
//! shards splits `[0, 2^128)` evenly: shard `i` starts at `floor(2^128 / N) * i` and the last shard
//! ends at `2^128 - 1`, exactly as Kinesis does, so the same key lands in the same shard here and
//! there.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The hash key Kinesis derives from a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Parses an explicit hash key: a decimal string in `[0, 2^128)`.
pub fn parse_explicit_hash_key(text: &str) -> Result<u128> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidArgument(format!(
            "explicit hash key '{text}' is not a decimal integer in [0, 2^128)"
        )));
    }
    text.parse::<u128>().map_err(|_| {
        Error::InvalidArgument(format!(
            "explicit hash key '{text}' is outside [0, 340282366920938463463374607431768211455]"
        ))
    })
}

/// An inclusive range of hash keys owned by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKeyRange {
    /// The first hash key of the range.
    #[serde(with = "u128_string")]
    pub start: u128,
    /// The last hash key of the range (inclusive).
    #[serde(with = "u128_string")]
    pub end: u128,
}

impl HashKeyRange {
    /// Whether `key` falls in this range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// Splits the whole hash-key space evenly into `shards` ranges, as Kinesis's CreateStream does.
pub fn even_split(shards: u32) -> Vec<HashKeyRange> {
    assert!(shards > 0, "a stream has at least one shard");
    // floor(2^128 / n) computed without overflowing u128: (2^128 - 1) / n differs from it only
    // when n divides 2^128 exactly, i.e. when n is a power of two.
    let n = shards as u128;
    let width = if n.is_power_of_two() {
        if n == 1 {
            0
        } else {
            1u128 << (128 - n.trailing_zeros())
        }
    } else {
        u128::MAX / n
    };
    (0..n)
        .map(|i| {
            let start = if n == 1 { 0 } else { width * i };
            let end = if i + 1 == n {
                u128::MAX
            } else {
                width * (i + 1) - 1
            };
            HashKeyRange { start, end }
        })
        .collect()
}

/// Finds the index of the range (in `ranges`, which must be sorted and cover the key space)
/// holding `key`.
pub fn route(ranges: &[HashKeyRange], key: u128) -> usize {
    ranges.partition_point(|r| r.end < key)
}

/// Serialises `u128`s as decimal strings, as Kinesis does, since JSON numbers cannot hold them.
mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_shards_split_exactly_as_kinesis() {
        let ranges = even_split(3);
        assert_eq!(ranges[0].start, 0);
        assert_eq!(ranges[0].end, 113427455640312821154458202477256070484);
        assert_eq!(ranges[1].start, 113427455640312821154458202477256070485);
        assert_eq!(ranges[1].end, 226854911280625642308916404954512140969);
        assert_eq!(ranges[2].start, 226854911280625642308916404954512140970);
        assert_eq!(ranges[2].end, 340282366920938463463374607431768211455);
    }

    #[test]
    fn powers_of_two_split_at_exact_boundaries() {
        assert_eq!(
            even_split(1),
            vec![HashKeyRange {
                start: 0,
                end: u128::MAX
            }]
        );
        let two = even_split(2);
        assert_eq!(two[0].end, (1u128 << 127) - 1);
        assert_eq!(two[1].start, 1u128 << 127);
        let four = even_split(4);
        assert_eq!(four[1].start, 1u128 << 126);
        assert_eq!(four[3].end, u128::MAX);
    }

    #[test]
    fn ranges_cover_the_key_space_without_gaps() {
        for n in 1..=17 {
            let ranges = even_split(n);
            assert_eq!(ranges.len(), n as usize);
            assert_eq!(ranges[0].start, 0);
            assert_eq!(ranges.last().map(|r| r.end), Some(u128::MAX));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end + 1, pair[1].start);
            }
        }
    }

    #[test]
    fn partition_key_a_lands_in_shard_zero_of_three() {
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
        assert_eq!(route(&even_split(3), hash_key("a")), 0);
    }

    #[test]
    fn route_respects_inclusive_boundaries() {
        let ranges = even_split(3);
        assert_eq!(route(&ranges, 113427455640312821154458202477256070484), 0);
        assert_eq!(route(&ranges, 113427455640312821154458202477256070485), 1);
        assert_eq!(route(&ranges, u128::MAX), 2);
    }

    #[test]
    fn explicit_hash_keys_are_validated() {
        assert_eq!(parse_explicit_hash_key("42").ok(), Some(42));
        assert!(parse_explicit_hash_key("-1").is_err());
        assert!(parse_explicit_hash_key("340282366920938463463374607431768211456").is_err());
        assert!(parse_explicit_hash_key("").is_err());
    }
}
