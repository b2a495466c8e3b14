//! Reference data: an object in S3-compatible storage (`S3ReferenceDataSource`), mapped by its
//! `ReferenceSchema` into an in-application table that joins with streams. The store is found
//! as delivery streams find theirs: `AWS_ENDPOINT_URL`, `AWS_REGION` and the keys in the
//! environment, unless [`Applications::set_reference_s3`](super::Applications::set_reference_s3)
//! says otherwise.

use datafusion::datasource::MemTable;
use object_store::ObjectStoreExt;
use sluice_delivery::Destination;
use sluice_delivery::options::S3Options;

use super::error::{ApplicationError, ErrorKind};
use super::input::InputMapper;
use super::model::ReferenceDataSource;

/// The largest reference object read (KDA allows 1 GB; Sluice keeps the table in memory).
pub const MAX_REFERENCE_BYTES: u64 = 1024 * 1024 * 1024;

/// Reads `source`'s object and maps it into a table.
pub async fn read_reference_table(
    source: &ReferenceDataSource,
    s3_options: &S3Options,
) -> Result<MemTable, ApplicationError> {
    let s3 = &source.s3_reference_data_source;
    let bucket = s3
        .bucket_arn
        .strip_prefix("arn:aws:s3:::")
        .unwrap_or(&s3.bucket_arn);
    if bucket.is_empty() || bucket.contains('/') {
        return Err(ApplicationError::invalid(format!(
            "S3ReferenceDataSource.BucketARN '{}' is not a bucket ARN such as arn:aws:s3:::my-bucket",
            s3.bucket_arn
        )));
    }
    let unavailable = |why: String| {
        ApplicationError::new(
            ErrorKind::InvalidApplicationConfiguration,
            format!(
                "reference table {}: s3://{bucket}/{} could not be read: {why}",
                source.table_name, s3.file_key
            ),
        )
    };
    let destination = Destination::open(&format!("s3://{bucket}/"), s3_options)
        .map_err(|e| unavailable(e.to_string()))?;
    let path = destination
        .path(&s3.file_key)
        .map_err(|e| unavailable(e.to_string()))?;
    let object = destination
        .store()
        .get(&path)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if object.meta.size > MAX_REFERENCE_BYTES {
        return Err(unavailable(format!(
            "it is {} bytes, more than the {MAX_REFERENCE_BYTES} a reference table may be",
            object.meta.size
        )));
    }
    let bytes = object
        .bytes()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mapper = InputMapper::new(&source.reference_schema).map_err(|e| {
        ApplicationError::invalid(format!(
            "ReferenceDataSource {}: Reference{e}",
            source.table_name
        ))
    })?;
    // JSON: a record per line (or the whole object when its row path takes every element);
    // CSV: the object, split into rows by the schema's row delimiter.
    let whole = source
        .reference_schema
        .record_format
        .record_format_type
        .eq_ignore_ascii_case("CSV")
        || source
            .reference_schema
            .record_format
            .mapping_parameters
            .as_ref()
            .and_then(|p| p.json.as_ref())
            .is_some_and(|j| j.record_row_path.trim_end().ends_with(']'));
    let records: Vec<&[u8]> = if whole {
        vec![&bytes[..]]
    } else {
        bytes
            .split(|b| *b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect()
    };
    let (batch, _, errors) = mapper
        .map(&records)
        .map_err(|e| unavailable(e.to_string()))?;
    if let Some(error) = errors.first() {
        return Err(unavailable(format!(
            "{} of its records do not map (record {}: {})",
            errors.len(),
            error.record + 1,
            error.message
        )));
    }
    MemTable::try_new(mapper.schema(), vec![vec![batch]]).map_err(|e| unavailable(e.to_string()))
}
