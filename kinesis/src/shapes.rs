//! The JSON types of each operation's members, from the Kinesis API model, checked before
//! anything else about a request — as AWS does, with AWS's wording: a member of the wrong type is
//! a `SerializationException` whose `Message` (capitalised, as AWS sends it) says what could not
//! be converted ("class java.lang.String can not be converted to an Integer", "Start of list
//! found where not expected", …). Members an operation does not have are ignored, as AWS ignores
//! them. Constraints (lengths, patterns, ranges) are checked next, by the actions.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorKind};

/// A member's type.
#[derive(Debug, Clone, Copy)]
enum Shape {
    String,
    Integer,
    Boolean,
    Blob,
    /// Epoch seconds (JSON) or milliseconds (CBOR, converted on the way in).
    Timestamp,
    List(&'static Shape),
    Map(&'static Shape),
    Structure(&'static [(&'static str, Shape)]),
}

use Shape::{Blob, Boolean, Integer, List, Map as MapOf, String as Str, Structure, Timestamp};

const STRINGS: Shape = List(&Str);
const TAGS: Shape = MapOf(&Str);
const STREAM_MODE: Shape = Structure(&[("StreamMode", Str)]);
const ENTRY: Shape = Structure(&[
    ("Data", Blob),
    ("ExplicitHashKey", Str),
    ("PartitionKey", Str),
]);
const ENTRIES: Shape = List(&ENTRY);
const SHARD_FILTER: Shape = Structure(&[("Type", Str), ("ShardId", Str), ("Timestamp", Timestamp)]);
const STARTING_POSITION: Shape = Structure(&[
    ("Type", Str),
    ("SequenceNumber", Str),
    ("Timestamp", Timestamp),
]);

/// The members of operation `action`'s input.
fn members(action: &str) -> &'static [(&'static str, Shape)] {
    match action {
        "AddTagsToStream" => &[("StreamName", Str), ("Tags", TAGS), ("StreamARN", Str)],
        "CreateStream" => &[
            ("StreamName", Str),
            ("ShardCount", Integer),
            ("StreamModeDetails", STREAM_MODE),
            ("Tags", TAGS),
        ],
        "DecreaseStreamRetentionPeriod" | "IncreaseStreamRetentionPeriod" => &[
            ("StreamName", Str),
            ("RetentionPeriodHours", Integer),
            ("StreamARN", Str),
        ],
        "DeleteStream" => &[
            ("StreamName", Str),
            ("EnforceConsumerDeletion", Boolean),
            ("StreamARN", Str),
        ],
        "DeregisterStreamConsumer" | "DescribeStreamConsumer" => &[
            ("StreamARN", Str),
            ("ConsumerName", Str),
            ("ConsumerARN", Str),
        ],
        "DescribeStream" => &[
            ("StreamName", Str),
            ("Limit", Integer),
            ("ExclusiveStartShardId", Str),
            ("StreamARN", Str),
        ],
        "DescribeStreamSummary" => &[("StreamName", Str), ("StreamARN", Str)],
        "EnableEnhancedMonitoring" | "DisableEnhancedMonitoring" => &[
            ("StreamName", Str),
            ("ShardLevelMetrics", STRINGS),
            ("StreamARN", Str),
        ],
        "GetRecords" => &[
            ("ShardIterator", Str),
            ("Limit", Integer),
            ("StreamARN", Str),
        ],
        "GetResourcePolicy" | "DeleteResourcePolicy" => &[("ResourceARN", Str)],
        "PutResourcePolicy" => &[("ResourceARN", Str), ("Policy", Str)],
        "GetShardIterator" => &[
            ("StreamName", Str),
            ("ShardId", Str),
            ("ShardIteratorType", Str),
            ("StartingSequenceNumber", Str),
            ("Timestamp", Timestamp),
            ("StreamARN", Str),
        ],
        "ListShards" => &[
            ("StreamName", Str),
            ("NextToken", Str),
            ("ExclusiveStartShardId", Str),
            ("MaxResults", Integer),
            ("StreamCreationTimestamp", Timestamp),
            ("ShardFilter", SHARD_FILTER),
            ("StreamARN", Str),
        ],
        "ListStreamConsumers" => &[
            ("StreamARN", Str),
            ("NextToken", Str),
            ("MaxResults", Integer),
            ("StreamCreationTimestamp", Timestamp),
        ],
        "ListStreams" => &[
            ("Limit", Integer),
            ("ExclusiveStartStreamName", Str),
            ("NextToken", Str),
        ],
        "ListTagsForStream" => &[
            ("StreamName", Str),
            ("ExclusiveStartTagKey", Str),
            ("Limit", Integer),
            ("StreamARN", Str),
        ],
        "MergeShards" => &[
            ("StreamName", Str),
            ("ShardToMerge", Str),
            ("AdjacentShardToMerge", Str),
            ("StreamARN", Str),
        ],
        "PutRecord" => &[
            ("StreamName", Str),
            ("Data", Blob),
            ("PartitionKey", Str),
            ("ExplicitHashKey", Str),
            ("SequenceNumberForOrdering", Str),
            ("StreamARN", Str),
        ],
        "PutRecords" => &[
            ("Records", ENTRIES),
            ("StreamName", Str),
            ("StreamARN", Str),
        ],
        "RegisterStreamConsumer" => &[("StreamARN", Str), ("ConsumerName", Str), ("Tags", TAGS)],
        "RemoveTagsFromStream" => &[
            ("StreamName", Str),
            ("TagKeys", STRINGS),
            ("StreamARN", Str),
        ],
        "SplitShard" => &[
            ("StreamName", Str),
            ("ShardToSplit", Str),
            ("NewStartingHashKey", Str),
            ("StreamARN", Str),
        ],
        "StartStreamEncryption" | "StopStreamEncryption" => &[
            ("StreamName", Str),
            ("EncryptionType", Str),
            ("KeyId", Str),
            ("StreamARN", Str),
        ],
        "SubscribeToShard" => &[
            ("ConsumerARN", Str),
            ("ShardId", Str),
            ("StartingPosition", STARTING_POSITION),
        ],
        "UpdateShardCount" => &[
            ("StreamName", Str),
            ("TargetShardCount", Integer),
            ("ScalingType", Str),
            ("StreamARN", Str),
        ],
        "UpdateStreamMode" => &[("StreamARN", Str), ("StreamModeDetails", STREAM_MODE)],
        _ => &[],
    }
}

/// Checks the JSON types of `request`'s members for operation `action`.
pub fn check(action: &str, request: &Map<String, Value>) -> Result<(), ApiError> {
    check_members(members(action), request)
}

fn check_members(members: &[(&str, Shape)], object: &Map<String, Value>) -> Result<(), ApiError> {
    for (name, shape) in members {
        if let Some(value) = object.get(*name) {
            check_value(*shape, value)?;
        }
    }
    Ok(())
}

fn type_error(message: String) -> ApiError {
    ApiError::new(ErrorKind::Serialization, message).with_capitalised_message()
}

/// What AWS says of a value that is a list or an object where it is not expected.
fn misplaced(value: &Value) -> Option<ApiError> {
    match value {
        Value::Array(_) => Some(type_error("Start of list found where not expected".into())),
        Value::Object(_) => Some(type_error(
            "Start of structure or map found where not expected.".into(),
        )),
        _ => None,
    }
}

fn check_value(shape: Shape, value: &Value) -> Result<(), ApiError> {
    if value.is_null() {
        return Ok(());
    }
    match shape {
        Str => match value {
            Value::String(_) => Ok(()),
            Value::Bool(_) => Err(type_error(
                "class java.lang.Boolean can not be converted to an String".into(),
            )),
            Value::Number(_) => Err(type_error(
                "class java.math.BigDecimal can not be converted to an String".into(),
            )),
            other => Err(misplaced(other).unwrap_or_else(|| type_error("Unexpected value".into()))),
        },
        Integer => match value {
            Value::Number(_) => Ok(()),
            Value::Bool(_) => Err(type_error(
                "class java.lang.Boolean can not be converted to an Integer".into(),
            )),
            Value::String(_) => Err(type_error(
                "class java.lang.String can not be converted to an Integer".into(),
            )),
            other => Err(misplaced(other).unwrap_or_else(|| type_error("Unexpected value".into()))),
        },
        Boolean => match value {
            Value::Bool(_) => Ok(()),
            Value::Number(_) => Err(type_error(
                "class java.math.BigDecimal can not be converted to an Boolean".into(),
            )),
            Value::String(s) => Err(type_error(format!(
                "'{}' can not be converted to an Boolean",
                s.to_uppercase()
            ))),
            other => Err(misplaced(other).unwrap_or_else(|| type_error("Unexpected value".into()))),
        },
        Timestamp => match value {
            Value::Number(_) | Value::String(_) => Ok(()),
            Value::Bool(_) => Err(type_error(
                "class java.lang.Boolean can not be converted to milliseconds since epoch".into(),
            )),
            other => Err(misplaced(other).unwrap_or_else(|| type_error("Unexpected value".into()))),
        },
        Blob => match value {
            Value::String(text) => check_base64(text),
            Value::Bool(_) => Err(type_error(
                "class java.lang.Boolean can not be converted to a Blob".into(),
            )),
            Value::Number(_) => Err(type_error(
                "class java.math.BigDecimal can not be converted to a Blob".into(),
            )),
            other => Err(misplaced(other).unwrap_or_else(|| type_error("Unexpected value".into()))),
        },
        List(item) => match value {
            Value::Array(items) => items.iter().try_for_each(|v| check_value(*item, v)),
            Value::Object(_) => Err(type_error(
                "Start of structure or map found where not expected.".into(),
            )),
            _ => Err(type_error("Expected list or null".into())),
        },
        MapOf(item) => match value {
            Value::Object(entries) => entries.values().try_for_each(|v| check_value(*item, v)),
            Value::Array(_) => Err(type_error("Start of list found where not expected".into())),
            _ => Err(type_error("Expected map or null".into())),
        },
        Structure(members) => match value {
            Value::Object(object) => check_members(members, object),
            Value::Array(_) => Err(type_error("Start of list found where not expected".into())),
            _ => Err(type_error("Expected null".into())),
        },
    }
}

fn check_base64(text: &str) -> Result<(), ApiError> {
    let blob = |why: String| type_error(format!("'{text}' can not be converted to a Blob: {why}"));
    if !text.len().is_multiple_of(4) {
        return Err(blob(format!(
            "Base64 encoded length is expected a multiple of 4 bytes but found: {}",
            text.len()
        )));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')))
    {
        return Err(blob(format!("Invalid Base64 character: '{bad}'")));
    }
    if STANDARD.decode(text).is_err() {
        return Err(blob(
            "Invalid last non-pad Base64 character dectected".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error(action: &str, request: Value) -> Option<String> {
        let Value::Object(request) = request else {
            return None;
        };
        check(action, &request).err().map(|e| e.message)
    }

    #[test]
    fn wrong_types_are_named_as_aws_names_them() {
        assert_eq!(
            error(
                "CreateStream",
                json!({"StreamName": "s", "ShardCount": "2"})
            )
            .as_deref(),
            Some("class java.lang.String can not be converted to an Integer")
        );
        assert_eq!(
            error("CreateStream", json!({"StreamName": 7})).as_deref(),
            Some("class java.math.BigDecimal can not be converted to an String")
        );
        assert_eq!(
            error("CreateStream", json!({"StreamName": ["s"]})).as_deref(),
            Some("Start of list found where not expected")
        );
        assert_eq!(
            error("DeleteStream", json!({"EnforceConsumerDeletion": "yes"})).as_deref(),
            Some("'YES' can not be converted to an Boolean")
        );
        assert_eq!(
            error("PutRecords", json!({"Records": {}})).as_deref(),
            Some("Start of structure or map found where not expected.")
        );
        assert_eq!(
            error("PutRecords", json!({"Records": [{"Data": "abc"}]})).as_deref(),
            Some(
                "'abc' can not be converted to a Blob: Base64 encoded length is expected a multiple of 4 bytes but found: 3"
            )
        );
        assert_eq!(
            error("PutRecord", json!({"Data": "ab!="})).as_deref(),
            Some("'ab!=' can not be converted to a Blob: Invalid Base64 character: '!'")
        );
        assert_eq!(
            error("CreateStream", json!({"StreamModeDetails": "ON_DEMAND"})).as_deref(),
            Some("Expected null")
        );
        assert_eq!(
            error("AddTagsToStream", json!({"Tags": ["a"]})).as_deref(),
            Some("Start of list found where not expected")
        );
        // Right types, unknown members and nulls pass.
        assert_eq!(
            error(
                "PutRecord",
                json!({"StreamName": "s", "Data": "eA==", "PartitionKey": "k", "Other": 1, "ExplicitHashKey": null})
            ),
            None
        );
    }
}
