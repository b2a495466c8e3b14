//! AWS event-stream framing (`application/vnd.amazon.eventstream`), the binary envelope
//! `SubscribeToShard` pushes its events in: each message is a prelude (total length, headers
//! length, the prelude's CRC32), string headers (`:message-type`, `:event-type`,
//! `:content-type`), the payload, and a CRC32 of everything before it. Big-endian throughout.
//!
//! # Example
//!
//! ```
//! use sluice_kinesis::eventstream::{Message, decode};
//!
//! let bytes = Message::event("SubscribeToShardEvent", "application/json", b"{}".to_vec()).encode();
//! let (message, used) = decode(&bytes).unwrap().unwrap();
//! assert_eq!(used, bytes.len());
//! assert_eq!(message.header(":event-type"), Some("SubscribeToShardEvent"));
//! ```

/// The header value type for a UTF-8 string.
const STRING: u8 = 7;
/// Total length, headers length, prelude CRC.
const PRELUDE_LEN: usize = 12;
const CRC_LEN: usize = 4;
/// The largest message a decoder accepts (AWS's limit is 16 MiB of payload).
pub const MAX_MESSAGE_LEN: usize = 24 * 1024 * 1024;

/// One event-stream message with string headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    /// An event (`:message-type` `event`) of type `event_type`.
    pub fn event(event_type: &str, content_type: &str, payload: Vec<u8>) -> Self {
        Self {
            headers: vec![
                (":message-type".into(), "event".into()),
                (":event-type".into(), event_type.into()),
                (":content-type".into(), content_type.into()),
            ],
            payload,
        }
    }

    /// An exception (`:message-type` `exception`) of AWS type `exception_type`; the stream ends
    /// after it.
    pub fn exception(exception_type: &str, content_type: &str, payload: Vec<u8>) -> Self {
        Self {
            headers: vec![
                (":message-type".into(), "exception".into()),
                (":exception-type".into(), exception_type.into()),
                (":content-type".into(), content_type.into()),
            ],
            payload,
        }
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The message as bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut headers = Vec::new();
        for (name, value) in &self.headers {
            // Header names are ours and short; values are AWS type names and sequence numbers.
            let name = &name.as_bytes()[..name.len().min(u8::MAX as usize)];
            let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
            headers.push(name.len() as u8);
            headers.extend_from_slice(name);
            headers.push(STRING);
            headers.extend_from_slice(&(value.len() as u16).to_be_bytes());
            headers.extend_from_slice(value);
        }
        let total = PRELUDE_LEN + headers.len() + self.payload.len() + CRC_LEN;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let prelude_crc = crc32fast::hash(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&headers);
        out.extend_from_slice(&self.payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Why bytes are not an event-stream message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed event-stream message: {0}")]
pub struct DecodeError(pub String);

/// Decodes the first message in `bytes`: the message and how many bytes it took, or `None` when
/// `bytes` holds only part of one.
pub fn decode(bytes: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let bad = |why: &str| DecodeError(why.to_string());
    if bytes.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let word =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let total = word(0) as usize;
    let headers_len = word(4) as usize;
    if crc32fast::hash(&bytes[..8]) != word(8) {
        return Err(bad("the prelude's CRC does not match"));
    }
    if total > MAX_MESSAGE_LEN {
        return Err(bad(&format!(
            "a message of {total} bytes is larger than {MAX_MESSAGE_LEN}"
        )));
    }
    if total < PRELUDE_LEN + CRC_LEN || headers_len > total - PRELUDE_LEN - CRC_LEN {
        return Err(bad("the lengths in the prelude do not fit together"));
    }
    if bytes.len() < total {
        return Ok(None);
    }
    if crc32fast::hash(&bytes[..total - CRC_LEN]) != word(total - CRC_LEN) {
        return Err(bad("the message's CRC does not match"));
    }
    let mut headers = Vec::new();
    let mut at = PRELUDE_LEN;
    let end = PRELUDE_LEN + headers_len;
    while at < end {
        let name_len = bytes[at] as usize;
        at += 1;
        let name = bytes
            .get(at..at + name_len)
            .filter(|_| at + name_len <= end)
            .ok_or_else(|| bad("a header name runs past the headers"))?;
        at += name_len;
        let kind = *bytes
            .get(at)
            .filter(|_| at < end)
            .ok_or_else(|| bad("a header has no type"))?;
        at += 1;
        if kind != STRING {
            return Err(bad(&format!(
                "header type {kind} is not supported (only strings)"
            )));
        }
        let len = bytes
            .get(at..at + 2)
            .filter(|_| at + 2 <= end)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
            .ok_or_else(|| bad("a header value has no length"))?;
        at += 2;
        let value = bytes
            .get(at..at + len)
            .filter(|_| at + len <= end)
            .ok_or_else(|| bad("a header value runs past the headers"))?;
        at += len;
        let text =
            |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad("a header is not UTF-8"));
        headers.push((text(name)?, text(value)?));
    }
    Ok(Some((
        Message {
            headers,
            payload: bytes[end..total - CRC_LEN].to_vec(),
        },
        total,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_splits_a_stream() {
        let first = Message::event("initial-response", "application/json", b"{}".to_vec());
        let second = Message::exception(
            "ResourceNotFoundException",
            "application/json",
            br#"{"message":"gone"}"#.to_vec(),
        );
        let mut bytes = first.encode();
        bytes.extend(second.encode());
        let (got, used) = decode(&bytes).expect("valid").expect("whole");
        assert_eq!(got, first);
        assert_eq!(
            decode(&bytes[used..used + 5]).expect("valid so far"),
            None,
            "a partial message waits"
        );
        let (got, rest) = decode(&bytes[used..]).expect("valid").expect("whole");
        assert_eq!(got, second);
        assert_eq!(used + rest, bytes.len());
    }

    #[test]
    fn a_changed_byte_is_caught() {
        let bytes = Message::event(
            "SubscribeToShardEvent",
            "application/json",
            b"{\"Records\":[]}".to_vec(),
        )
        .encode();
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x40;
            assert!(
                !matches!(decode(&changed), Ok(Some((ref m, _))) if m.payload == b"{\"Records\":[]}"[..] && i < bytes.len()),
                "byte {i}"
            );
        }
    }
}
