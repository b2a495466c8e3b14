//! Request and response bodies in AWS JSON 1.1 and CBOR 1.1.
//!
//! Both decode into one JSON value the actions read: blobs as base64 strings and timestamps as
//! epoch seconds, which is how JSON 1.1 carries them. CBOR carries blobs as byte strings and
//! timestamps as epoch milliseconds (what the Java SDKs, the KCL and the Kinesis Agent send), so
//! a CBOR body is converted on the way in and a response on the way out.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ciborium::Value as Cbor;
use serde_json::{Map, Number, Value};

use crate::error::ApiError;

/// The body encodings Kinesis speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Json,
    Cbor,
}

/// Members that hold blobs.
const BLOB_FIELDS: &[&str] = &["Data"];
/// Members that hold timestamps.
const TIME_FIELDS: &[&str] = &[
    "Timestamp",
    "ApproximateArrivalTimestamp",
    "StreamCreationTimestamp",
];

impl Protocol {
    /// From the request's `Content-Type`; JSON when absent (aws-cli and boto3 always send it).
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(t) if t.contains("cbor") => Self::Cbor,
            _ => Self::Json,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/x-amz-json-1.1",
            Self::Cbor => "application/x-amz-cbor-1.1",
        }
    }

    /// A request body as a JSON object; an empty body is `{}`.
    pub fn decode(self, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        let value = match self {
            Self::Json => serde_json::from_slice::<Value>(body).map_err(|e| {
                ApiError::serialization(format!("the request body is not valid JSON: {e}"))
            })?,
            Self::Cbor => {
                let cbor: Cbor = ciborium::de::from_reader(body).map_err(|e| {
                    ApiError::serialization(format!("the request body is not valid CBOR: {e}"))
                })?;
                cbor_to_json(cbor, None)?
            }
        };
        match value {
            Value::Object(map) => Ok(map),
            _ => Err(ApiError::serialization(
                "the request body must be an object",
            )),
        }
    }

    /// A response body.
    pub fn encode(self, value: &Value) -> Vec<u8> {
        match self {
            Self::Json => serde_json::to_vec(value).unwrap_or_default(),
            Self::Cbor => {
                let mut out = Vec::new();
                if ciborium::ser::into_writer(&json_to_cbor(value, None), &mut out).is_err() {
                    out.clear();
                }
                out
            }
        }
    }
}

fn cbor_to_json(value: Cbor, field: Option<&str>) -> Result<Value, ApiError> {
    Ok(match value {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let i = i128::from(i);
            if field.is_some_and(|f| TIME_FIELDS.contains(&f)) {
                // Milliseconds in CBOR, seconds in JSON.
                Number::from_f64(i as f64 / 1000.0).map_or(Value::Null, Value::Number)
            } else if let Ok(i) = i64::try_from(i) {
                Value::Number(i.into())
            } else {
                return Err(ApiError::serialization(format!(
                    "integer {i} is out of range"
                )));
            }
        }
        Cbor::Float(f) => {
            let f = if field.is_some_and(|f| TIME_FIELDS.contains(&f)) {
                f / 1000.0
            } else {
                f
            };
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        Cbor::Bytes(bytes) => Value::String(STANDARD.encode(bytes)),
        Cbor::Text(text) => Value::String(text),
        // Tag 1 is an epoch-seconds time.
        Cbor::Tag(1, inner) => match *inner {
            Cbor::Integer(i) => {
                Value::Number(Number::from(i64::try_from(i128::from(i)).unwrap_or(0)))
            }
            Cbor::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            other => cbor_to_json(other, None)?,
        },
        Cbor::Tag(_, inner) => cbor_to_json(*inner, field)?,
        Cbor::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| cbor_to_json(v, None))
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let Cbor::Text(key) = key else {
                    return Err(ApiError::serialization("CBOR map keys must be text"));
                };
                let converted = cbor_to_json(value, Some(&key))?;
                map.insert(key, converted);
            }
            Value::Object(map)
        }
        _ => return Err(ApiError::serialization("unsupported CBOR value")),
    })
}

fn json_to_cbor(value: &Value, field: Option<&str>) -> Cbor {
    match value {
        Value::Null => Cbor::Null,
        Value::Bool(b) => Cbor::Bool(*b),
        Value::Number(n) => {
            if field.is_some_and(|f| TIME_FIELDS.contains(&f)) {
                let millis = (n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
                Cbor::Integer(millis.into())
            } else if let Some(i) = n.as_i64() {
                Cbor::Integer(i.into())
            } else if let Some(u) = n.as_u64() {
                Cbor::Integer(u.into())
            } else {
                Cbor::Float(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) if field.is_some_and(|f| BLOB_FIELDS.contains(&f)) => {
            Cbor::Bytes(STANDARD.decode(s).unwrap_or_default())
        }
        Value::String(s) => Cbor::Text(s.clone()),
        Value::Array(items) => Cbor::Array(items.iter().map(|v| json_to_cbor(v, None)).collect()),
        Value::Object(map) => Cbor::Map(
            map.iter()
                .map(|(k, v)| (Cbor::Text(k.clone()), json_to_cbor(v, Some(k))))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_blobs_and_milliseconds_read_as_json_does() {
        let request = Cbor::Map(vec![
            (Cbor::Text("Data".into()), Cbor::Bytes(b"hi".to_vec())),
            (
                Cbor::Text("Timestamp".into()),
                Cbor::Integer(1_500i64.into()),
            ),
            (Cbor::Text("PartitionKey".into()), Cbor::Text("k".into())),
        ]);
        let mut body = Vec::new();
        ciborium::ser::into_writer(&request, &mut body).expect("encodes");
        let from_cbor = Protocol::Cbor.decode(&body).expect("decodes");
        let from_json = Protocol::Json
            .decode(br#"{"Data": "aGk=", "Timestamp": 1.5, "PartitionKey": "k"}"#)
            .expect("decodes");
        assert_eq!(from_cbor, from_json);

        let response =
            serde_json::json!({"Records": [{"Data": "aGk=", "ApproximateArrivalTimestamp": 2.25}]});
        let encoded = Protocol::Cbor.encode(&response);
        let back: Cbor = ciborium::de::from_reader(encoded.as_slice()).expect("valid CBOR");
        let text = format!("{back:?}");
        assert!(
            text.contains("Bytes([104, 105])") && text.contains("2250"),
            "{text}"
        );
    }

    #[test]
    fn malformed_bodies_are_serialization_errors() {
        let error = Protocol::Json.decode(b"{nope").err().map(|e| e.kind);
        assert_eq!(error, Some(crate::error::ErrorKind::Serialization));
        let error = Protocol::Cbor.decode(&[0xff, 0x00]).err().map(|e| e.kind);
        assert_eq!(error, Some(crate::error::ErrorKind::Serialization));
        assert!(Protocol::Json.decode(b"[1]").is_err());
    }
}
