//! Keeping string and binary view columns from holding other records' bytes.
//!
//! A view array (`Utf8View`, DataFusion's type for `VARCHAR`) points into shared data buffers:
//! `take` and `slice` keep every buffer of the source. When a client's batch is routed to four
//! shards, each shard's rows would keep the whole batch's strings; concatenated into a segment,
//! every shard's file would carry all of them (four times the string bytes on disk, in memory
//! and over Flight). [`compact_views`] copies just the referenced strings when the buffers hold
//! much more than that; the engine applies it where client batches enter a shard.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, GenericByteViewArray};
use arrow::datatypes::{ByteViewType, DataType};

/// Buffers may hold this much beyond what the views use before they are compacted.
const SLACK_BYTES: usize = 64 * 1024;

/// `column` with its view data buffers cut down to the bytes its views use, when they hold
/// more than twice that; any other column as it is.
pub fn compact_views(column: &ArrayRef) -> ArrayRef {
    let compacted = match column.data_type() {
        DataType::Utf8View => compacted(column.as_string_view()).map(|v| Arc::new(v) as ArrayRef),
        DataType::BinaryView => compacted(column.as_binary_view()).map(|v| Arc::new(v) as ArrayRef),
        _ => None,
    };
    compacted.unwrap_or_else(|| Arc::clone(column))
}

/// `views` with only the bytes they use, if their buffers hold more than twice that.
fn compacted<T: ByteViewType + ?Sized>(
    views: &GenericByteViewArray<T>,
) -> Option<GenericByteViewArray<T>> {
    let held: usize = views.data_buffers().iter().map(|b| b.len()).sum();
    // Buffers within the slack cannot be wasteful: no need to visit every view.
    if held <= SLACK_BYTES || held <= 2 * views.total_buffer_bytes_used() + SLACK_BYTES {
        return None;
    }
    Some(views.gc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringViewArray, UInt32Array};

    fn notes(rows: usize) -> ArrayRef {
        Arc::new(StringViewArray::from_iter_values(
            (0..rows).map(|i| format!("note {i:012} abcdefghijklmnopqrstuvw")),
        ))
    }

    const NOTE_BYTES: usize = "note 000000000000 abcdefghijklmnopqrstuvw".len();

    fn held(column: &ArrayRef) -> usize {
        let views = column.as_string_view();
        views.data_buffers().iter().map(|b| b.len()).sum()
    }

    #[test]
    fn a_quarter_taken_from_a_batch_keeps_only_its_strings() {
        let all = notes(40_000);
        let indices = UInt32Array::from_iter_values((0..40_000).step_by(4));
        let taken = arrow::compute::take(&all, &indices, None).expect("indices in range");
        assert_eq!(held(&taken), held(&all), "take shares every buffer");
        let compacted = compact_views(&taken);
        assert_eq!(compacted.as_ref(), taken.as_ref());
        assert_eq!(held(&compacted), 10_000 * NOTE_BYTES);
    }

    #[test]
    fn a_column_using_its_buffers_is_left_alone() {
        let all = notes(40_000);
        let compacted = compact_views(&all);
        assert!(Arc::ptr_eq(&all, &compacted));
        // A small slice of a small array: not worth a copy; of a large one, it is.
        let small = notes(1_000);
        assert_eq!(
            held(&compact_views(&small.slice(0, 10))),
            1_000 * NOTE_BYTES
        );
        assert_eq!(held(&compact_views(&all.slice(0, 100))), 100 * NOTE_BYTES);
    }
}
