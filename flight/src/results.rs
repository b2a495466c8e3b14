//! Result rows as Flight messages: what a `DoGet` of a query or a subscription sends.
//!
//! Each result batch is cut into pieces of about [`MESSAGE_BYTES`] by the bytes its rows cover,
//! view columns (`Utf8View`, `BinaryView`: DataFusion's strings) are sent as `Utf8` and `Binary`
//! ([`wire_schema`]; the Flight SQL JDBC driver and other clients before Arrow's string views
//! refuse them, and each piece then carries only its own strings), and each piece is encoded
//! by arrow-ipc's [`StreamEncoder`], whose record batch bodies are the batch's own Arrow buffers:
//! a [`ResultMessage`] holds them as they are, and [`crate::wire`] hands them to HTTP/2 without
//! copying them. Through tonic's generated server (which wants whole `FlightData`), the pieces
//! are joined.
//!
//! # Example
//!
//! ```
//! # use std::sync::Arc;
//! # use arrow::array::{Int64Array, RecordBatch};
//! # use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
//! # use futures::StreamExt;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let batch = RecordBatch::try_from_iter([(
//!     "v",
//!     Arc::new(Int64Array::from(vec![1, 2, 3])) as _,
//! )])
//! .expect("a batch");
//! let rows = RecordBatchStreamAdapter::new(batch.schema(), futures::stream::iter([Ok(batch)]));
//! let (_closer, closing) = tokio::sync::watch::channel(false);
//! let messages: Vec<_> =
//!     sluice_flight::results::result_messages(Box::pin(rows), closing).collect().await;
//! // The schema, then the batch.
//! assert_eq!(messages.len(), 2);
//! # }
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{Array, AsArray, GenericByteViewArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::compute::{can_cast_types, cast};
use arrow::datatypes::{ByteViewType, DataType, Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ipc::writer::{IpcWriteOptions, StreamEncoder};
use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::{FlightData, SchemaAsIpc};
use bytes::Bytes;
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::Status;

use crate::status::datafusion_status;

/// About the most row data one result message carries: well under the 4 MiB that gRPC clients
/// accept by default.
pub const MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// The messages of one `DoGet` answer.
pub type ResultMessages = Pin<Box<dyn Stream<Item = Result<ResultMessage, Status>> + Send>>;

/// One Flight message whose body may be in pieces: `data`'s own `data_body` (if any) followed
/// by `body`, each piece an Arrow buffer of the result as it is.
#[derive(Debug, Clone, Default)]
pub struct ResultMessage {
    pub data: FlightData,
    pub body: Vec<Bytes>,
}

impl ResultMessage {
    /// The length of the whole body.
    pub fn body_len(&self) -> usize {
        self.data.data_body.len() + self.body.iter().map(Bytes::len).sum::<usize>()
    }

    /// One `FlightData`, the body's pieces joined.
    pub fn into_flight_data(self) -> FlightData {
        let Self { mut data, body } = self;
        if !body.is_empty() {
            let mut joined = Vec::with_capacity(
                data.data_body.len() + body.iter().map(Bytes::len).sum::<usize>(),
            );
            joined.extend_from_slice(&data.data_body);
            for piece in &body {
                joined.extend_from_slice(piece);
            }
            data.data_body = joined.into();
        }
        data
    }
}

impl From<FlightData> for ResultMessage {
    fn from(data: FlightData) -> Self {
        Self {
            data,
            body: Vec::new(),
        }
    }
}

/// Encodes `rows` as Flight messages, for as long as they come or until `closing` turns true;
/// dropping the stream drops the rows, and with them the query's work.
pub fn result_messages(
    rows: SendableRecordBatchStream,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> ResultMessages {
    let schema = rows.schema();
    let stopped = closing.clone();
    let closed = async move {
        let _ = closing.wait_for(|closed| *closed).await;
    };
    let batches = rows.take_until(closed);
    let options = IpcWriteOptions::default();
    let schema = wire_schema(&schema);
    let schema_message = FlightData::from(SchemaAsIpc::new(&schema, &options));
    let encoder = StreamEncoder::try_new_with_options(&schema, options)
        .map_err(|e| Status::internal(format!("encoding the result schema: {e}")));
    let mut encoder = match encoder {
        Ok(encoder) => encoder,
        Err(status) => return Box::pin(futures::stream::iter([Err(status)])),
    };
    let data = batches
        .map(move |batch| {
            let batch = batch.map_err(datafusion_status)?;
            let mut messages = Vec::new();
            for piece in split_for_messages(batch) {
                let piece = to_wire(piece, &schema)?;
                let buffers = encoder
                    .encode(&piece)
                    .map_err(|e| Status::internal(format!("encoding a result batch: {e}")))?;
                messages.extend(
                    flight_messages(buffers)
                        .map_err(|e| Status::internal(format!("encoding a result batch: {e}")))?,
                );
            }
            Ok::<_, Status>(futures::stream::iter(messages.into_iter().map(Ok)))
        })
        .try_flatten();
    // Rows cut short by a shutdown end with an error, so a client never takes a partial
    // result, or the end of a continuous query, for a complete one.
    let cut_short = futures::stream::once(async move { *stopped.borrow() })
        .filter(|stopped| futures::future::ready(*stopped))
        .map(|_| {
            Err(Status::unavailable(
                "the Sluice server is shutting down; it ended this query",
            ))
        });
    Box::pin(
        futures::stream::once(async move { Ok(schema_message.into()) })
            .chain(data)
            .chain(cut_short),
    )
}

/// `schema` as results travel: view types as their plain forms (`Utf8View` as `Utf8`,
/// `BinaryView` as `Binary`) and dictionaries as their values, inside lists, maps and structs
/// too. Every schema a Flight SQL client is told (query results, prepared statements, tables)
/// is this one.
pub fn wire_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<FieldRef> = schema.fields().iter().map(wire_field).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn wire_field(field: &FieldRef) -> FieldRef {
    let sent = wire_type(field.data_type());
    if &sent == field.data_type() || !can_cast_types(field.data_type(), &sent) {
        return Arc::clone(field);
    }
    Arc::new(Field::clone(field).with_data_type(sent))
}

fn wire_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, values) => wire_type(values),
        DataType::List(item) => DataType::List(wire_field(item)),
        DataType::LargeList(item) => DataType::LargeList(wire_field(item)),
        DataType::FixedSizeList(item, n) => DataType::FixedSizeList(wire_field(item), *n),
        DataType::Map(entries, sorted) => DataType::Map(wire_field(entries), *sorted),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(wire_field).collect()),
        other => other.clone(),
    }
}

/// `piece` with its columns as `schema` (its [`wire_schema`]) says they travel.
fn to_wire(piece: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, Status> {
    if piece.schema().fields() == schema.fields() {
        return Ok(piece);
    }
    let columns = piece
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type()).map_err(|e| {
                    Status::internal(format!(
                        "cannot send column '{}' as {}: {e}",
                        field.name(),
                        field.data_type()
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>, Status>>()?;
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| Status::internal(format!("a result batch: {e}")))
}

/// The Flight messages in an IPC stream encoder's output: each message's flatbuffer as the
/// header, its body buffers as they are. The stream's schema message is left out (Flight sends
/// the schema first, whether or not rows follow).
fn flight_messages(buffers: Vec<Buffer>) -> Result<Vec<ResultMessage>, ArrowError> {
    let mut buffers = IpcBytes(buffers.into());
    let mut messages = Vec::new();
    while !buffers.is_empty() {
        let prefix = buffers.take(8)?;
        let prefix = join(&prefix);
        let metadata_len = match prefix.as_slice() {
            [0xff, 0xff, 0xff, 0xff, len @ ..] => {
                i32::from_le_bytes(len.try_into().map_err(|_| malformed("length"))?)
            }
            _ => return Err(malformed("continuation marker")),
        };
        let metadata =
            join(&buffers.take(usize::try_from(metadata_len).map_err(|_| malformed("length"))?)?);
        let message = root_as_message(&metadata)
            .map_err(|e| ArrowError::IpcError(format!("encoder wrote an invalid message: {e}")))?;
        let body_len = usize::try_from(message.bodyLength()).map_err(|_| malformed("body"))?;
        let header_type = message.header_type();
        let body = buffers.take(body_len)?;
        if header_type == MessageHeader::Schema {
            continue;
        }
        messages.push(ResultMessage {
            data: FlightData {
                data_header: metadata.into(),
                ..Default::default()
            },
            body: body.into_iter().map(arrow_bytes).collect(),
        });
    }
    Ok(messages)
}

fn malformed(what: &str) -> ArrowError {
    ArrowError::IpcError(format!(
        "the IPC encoder's output has no valid message {what}"
    ))
}

/// An Arrow buffer as `Bytes`, sharing its memory.
fn arrow_bytes(buffer: Buffer) -> Bytes {
    struct Shared(Buffer);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_slice()
        }
    }
    Bytes::from_owner(Shared(buffer))
}

fn join(buffers: &[Buffer]) -> Vec<u8> {
    buffers
        .iter()
        .map(Buffer::as_slice)
        .collect::<Vec<_>>()
        .concat()
}

/// An IPC encoder's output, read from the front by length.
struct IpcBytes(VecDeque<Buffer>);

impl IpcBytes {
    fn is_empty(&self) -> bool {
        self.0.iter().all(|b| b.is_empty())
    }

    /// The next `len` bytes, as the buffers (or parts of them) that hold them.
    fn take(&mut self, mut len: usize) -> Result<Vec<Buffer>, ArrowError> {
        let mut taken = Vec::new();
        while len > 0 {
            let buffer = self.0.pop_front().ok_or_else(|| malformed("body"))?;
            if buffer.len() > len {
                self.0.push_front(buffer.slice(len));
                taken.push(buffer.slice_with_length(0, len));
                len = 0;
            } else {
                len -= buffer.len();
                taken.push(buffer);
            }
        }
        Ok(taken)
    }
}

/// `batch` cut into row ranges of about [`MESSAGE_BYTES`] each, by the bytes those rows cover.
///
/// arrow-flight's own split counts each column's whole buffers, but a scan's columns are
/// slices of the one buffer a segment file was read into: every column seemed as large as the
/// file, and a segment went out as hundreds of messages of a few hundred rows (pyarrow and ADBC
/// clients read 20 to 100 times slower than with whole batches).
fn split_for_messages(batch: RecordBatch) -> Vec<RecordBatch> {
    // A view column's data buffers bound the strings its rows use, without visiting every
    // view (a segment's batches fit one message by that measure); only a batch that may not
    // fit is counted exactly.
    let bound: usize = batch
        .columns()
        .iter()
        .map(|c| row_bytes(c.as_ref(), false))
        .sum();
    let bytes = if bound <= MESSAGE_BYTES {
        bound
    } else {
        batch
            .columns()
            .iter()
            .map(|c| row_bytes(c.as_ref(), true))
            .sum()
    };
    let rows = batch.num_rows();
    let pieces = bytes.div_ceil(MESSAGE_BYTES).clamp(1, rows.max(1));
    if pieces == 1 {
        return vec![batch];
    }
    let rows_per_piece = rows.div_ceil(pieces);
    (0..rows)
        .step_by(rows_per_piece)
        .map(|offset| batch.slice(offset, rows_per_piece.min(rows - offset)))
        .collect()
}

/// The bytes `column`'s rows take in an IPC message; for view columns, `exact` counts the
/// strings the views use, otherwise the data buffers they point into (at least as many).
fn row_bytes(column: &dyn Array, exact: bool) -> usize {
    let validity = column
        .logical_nulls()
        .map_or(0, |_| column.len().div_ceil(8));
    match column.data_type() {
        DataType::Utf8View => validity + view_bytes(column.as_string_view(), exact),
        DataType::BinaryView => validity + view_bytes(column.as_binary_view(), exact),
        _ => column
            .to_data()
            .get_slice_memory_size()
            .unwrap_or_else(|_| column.get_buffer_memory_size()),
    }
}

/// The bytes of a view column's views and the strings they use (`exact`) or hold.
fn view_bytes<T: ByteViewType + ?Sized>(views: &GenericByteViewArray<T>, exact: bool) -> usize {
    let strings = if exact {
        views.total_buffer_bytes_used()
    } else {
        views.data_buffers().iter().map(|b| b.len()).sum()
    };
    16 * views.len() + strings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, ListArray, StringArray,
        StringViewArray, StructArray,
    };
    use arrow::datatypes::{Field, Int32Type};
    use arrow_flight::decode::FlightRecordBatchStream;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    fn batch(rows: usize, note_bytes: usize) -> RecordBatch {
        let note = "x".repeat(note_bytes);
        RecordBatch::try_from_iter([
            (
                "v",
                Arc::new(Int64Array::from_iter_values(0..rows as i64)) as _,
            ),
            (
                "note",
                Arc::new(StringArray::from_iter_values((0..rows).map(|_| &note))) as _,
            ),
        ])
        .expect("valid batch")
    }

    /// `batches` through [`result_messages`], then decoded as a Flight client decodes them.
    async fn round_trip(batches: Vec<RecordBatch>) -> (Vec<ResultMessage>, Vec<RecordBatch>) {
        let schema = batches[0].schema();
        let rows = RecordBatchStreamAdapter::new(
            Arc::clone(&schema),
            futures::stream::iter(batches.into_iter().map(Ok)),
        );
        let (_closer, closing) = tokio::sync::watch::channel(false);
        let messages: Vec<ResultMessage> = result_messages(Box::pin(rows), closing)
            .try_collect()
            .await
            .expect("encoded");
        let data = messages
            .clone()
            .into_iter()
            .map(|m| Ok(m.into_flight_data()));
        let decoded = FlightRecordBatchStream::new_from_flight_data(futures::stream::iter(data))
            .try_collect()
            .await
            .expect("decoded");
        (messages, decoded)
    }

    #[tokio::test]
    async fn results_of_every_shape_decode_as_sent() {
        let values = Int64Array::from_iter((0..1000).map(|i| (i % 7 != 0).then_some(i)));
        let flags = BooleanArray::from_iter((0..1000).map(|i| (i % 5 != 0).then_some(i % 3 == 0)));
        let notes =
            StringViewArray::from_iter((0..1000).map(|i| {
                (i % 11 != 0).then(|| format!("a note long enough to be out of line {i}"))
            }));
        let words = StringArray::from_iter_values((0..1000).map(|i| format!("w{i}")));
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>(
            (0..1000).map(|i| (i % 4 != 0).then(|| vec![Some(i), None, Some(i + 1)])),
        );
        let point = StructArray::from(vec![
            (
                Arc::new(Field::new("x", DataType::Int32, true)),
                Arc::new(Int32Array::from_iter(
                    (0..1000).map(|i| (i % 2 == 0).then_some(i)),
                )) as ArrayRef,
            ),
            (
                Arc::new(Field::new("label", DataType::Utf8View, false)),
                Arc::new(StringViewArray::from_iter_values(
                    (0..1000).map(|i| format!("p{i}")),
                )) as ArrayRef,
            ),
        ]);
        let whole = RecordBatch::try_from_iter([
            ("v", Arc::new(values) as ArrayRef),
            ("flag", Arc::new(flags) as ArrayRef),
            ("note", Arc::new(notes) as ArrayRef),
            ("word", Arc::new(words) as ArrayRef),
            ("list", Arc::new(lists) as ArrayRef),
            ("point", Arc::new(point) as ArrayRef),
        ])
        .expect("valid batch");
        // Slices at odd offsets, as a scan's batches are slices of what a segment holds.
        let sent = vec![
            whole.slice(3, 500),
            whole.slice(503, 0),
            whole.slice(503, 497),
        ];
        let (messages, decoded) = round_trip(sent.clone()).await;
        assert_eq!(messages.len(), 4, "the schema, then one message per batch");
        // Views arrive as plain strings, in lists and structs too.
        let schema = wire_schema(&whole.schema());
        assert_eq!(schema.field(2).data_type(), &DataType::Utf8);
        assert_eq!(
            schema.field(5).data_type(),
            &DataType::Struct(
                vec![
                    Field::new("x", DataType::Int32, true),
                    Field::new("label", DataType::Utf8, false),
                ]
                .into()
            )
        );
        let sent = arrow::compute::concat_batches(&whole.schema(), &sent).expect("same schema");
        let sent = to_wire(sent, &schema).expect("castable");
        let decoded = arrow::compute::concat_batches(&schema, &decoded).expect("same schema");
        assert_eq!(decoded, sent);
    }

    #[tokio::test]
    async fn dictionaries_arrive_as_their_values() {
        let keys: DictionaryArray<Int32Type> = ["a", "b", "a", "c"].into_iter().collect();
        let sent =
            RecordBatch::try_from_iter([("k", Arc::new(keys) as ArrayRef)]).expect("valid batch");
        assert_eq!(
            wire_schema(&sent.schema()).field(0).data_type(),
            &DataType::Utf8
        );
        let (_, decoded) = round_trip(vec![sent]).await;
        let expected: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a", "c"]));
        assert_eq!(decoded[0].column(0), &expected);
    }

    #[tokio::test]
    async fn message_bodies_are_the_batches_own_buffers() {
        let sent = batch(10_000, 20);
        let values = sent.column(0).to_data().buffers()[0].as_ptr();
        let (messages, decoded) = round_trip(vec![sent.clone()]).await;
        assert_eq!(decoded, vec![sent]);
        let bodies: Vec<*const u8> = messages[1].body.iter().map(|b| b.as_ptr()).collect();
        assert!(bodies.contains(&values), "the values buffer was copied");
        assert!(messages[1].data.data_body.is_empty());
        assert_eq!(
            messages[1].body_len(),
            messages[1].clone().into_flight_data().data_body.len()
        );
    }

    #[test]
    fn a_slice_of_a_large_batch_is_measured_by_its_rows() {
        // 1,000 rows of a 40 MB batch: the buffers are the whole batch's, the rows ~40 KB.
        let large = batch(1_000_000, 32);
        let slice = large.slice(500_000, 1_000);
        assert!(slice.get_array_memory_size() > 10 * MESSAGE_BYTES);
        let pieces = split_for_messages(slice.clone());
        assert_eq!(pieces, vec![slice]);
    }

    #[test]
    fn a_slice_of_large_views_is_counted_by_the_strings_it_uses() {
        // 1,000 rows of 100-byte strings, pointing into ~10 MB of data buffers.
        let notes: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..100_000).map(|i| format!("{i:0100}")),
        ));
        let large = RecordBatch::try_from_iter([("note", notes)]).expect("valid batch");
        let slice = large.slice(50_000, 1_000);
        assert!(row_bytes(slice.column(0).as_ref(), false) > 4 * MESSAGE_BYTES);
        assert_eq!(
            row_bytes(slice.column(0).as_ref(), true),
            1_000 * (16 + 100)
        );
        assert_eq!(split_for_messages(slice.clone()), vec![slice]);
    }

    #[test]
    fn a_large_batch_is_cut_into_even_pieces_in_order() {
        // 100,000 rows of ~108 bytes: ~10.8 MB, six pieces of ~1.8 MB.
        let large = batch(100_000, 100);
        let pieces = split_for_messages(large.clone());
        assert_eq!(pieces.len(), 6);
        assert!(
            pieces
                .iter()
                .all(|p| p.num_rows() == 16_667 || p.num_rows() == 16_665)
        );
        let rejoined =
            arrow::compute::concat_batches(&large.schema(), &pieces).expect("same schema");
        assert_eq!(rejoined, large);
        assert_eq!(split_for_messages(batch(0, 1)).len(), 1);
    }

    #[test]
    fn view_pieces_carry_only_their_own_strings() {
        let notes: ArrayRef = Arc::new(StringViewArray::from_iter_values(
            (0..100_000).map(|i| format!("{i:0100}")),
        ));
        let large = RecordBatch::try_from_iter([("note", notes)]).expect("valid batch");
        // 100,000 x (16 + 100) bytes: ~11.6 MB, six pieces.
        let pieces = split_for_messages(large.clone());
        assert_eq!(pieces.len(), 6);
        let schema = wire_schema(&large.schema());
        let sent: Vec<RecordBatch> = pieces
            .into_iter()
            .map(|p| to_wire(p, &schema).expect("castable"))
            .collect();
        for piece in &sent {
            let strings = piece.column(0).as_string::<i32>().values().len();
            assert_eq!(strings, piece.num_rows() * 100);
        }
        let rejoined = arrow::compute::concat_batches(&schema, &sent).expect("same schema");
        let large = to_wire(large, &schema).expect("castable");
        assert_eq!(rejoined, large);
    }
}
