//! Session windows: per key, rows no more than a gap apart belong to one window, which ends a
//! gap after its last row.
//!
//! A session's bounds are only known once it is over (a later row can extend it or bridge it
//! with the next one), so [`Sessions`] keeps each open session's rows — by reference into the
//! batches they arrived in, which are dropped once none of their rows is still held — and hands
//! out a closed session's rows with `window_start` (its first row's time) and `window_end` (its
//! last row's time plus the gap) when the watermark passes its end.

use std::collections::{BTreeSet, HashMap};

use foldhash::{HashMap as FastMap, HashMapExt};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::compute::{cast, interleave_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Result as DFResult;

use crate::window::{KeyExpr, TumbleSpec};

/// A session key in arrow's row format (empty when sessions are not keyed).
type Key = Box<[u8]>;

/// One open session.
struct Session {
    key: Key,
    start: i64,
    last: i64,
    /// (batch number, row) of every row in the session.
    rows: Vec<(u64, u32)>,
    /// Per shard, the oldest record in the session (a few shards: a list).
    oldest: Vec<(u32, u64)>,
}

/// Notes record `seq` of `shard` in a session's per-shard oldest records.
fn note_oldest(oldest: &mut Vec<(u32, u64)>, shard: u32, seq: u64) {
    match oldest.iter_mut().find(|(s, _)| *s == shard) {
        Some((_, held)) => *held = (*held).min(seq),
        None => oldest.push((shard, seq)),
    }
}

impl Session {
    /// A session ends a gap after its last row; a stagger window a range after its first.
    fn end(&self, gap: i64, stagger: bool) -> i64 {
        if stagger {
            self.start + gap
        } else {
            self.last + gap
        }
    }
}

/// A batch some open session still holds rows of.
struct Held {
    batch: RecordBatch,
    live: usize,
}

/// The open sessions of one `session(…)` window.
pub struct Sessions {
    gap: i64,
    time_index: usize,
    keys: Vec<usize>,
    /// Stagger windows: the keys as expressions (in place of `keys`), and windows of a fixed
    /// length from their first row.
    stagger: Option<Vec<KeyExpr>>,
    converter: RowConverter,
    /// The windowed schema: the stream's public columns, then window_start, window_end.
    schema: SchemaRef,
    batches: FastMap<u64, Held>,
    next_batch: u64,
    sessions: FastMap<u64, Session>,
    /// Per key, its open sessions.
    by_key: FastMap<Key, Vec<u64>>,
    /// Open sessions by end, for closing in order.
    by_end: BTreeSet<(i64, u64)>,
    next_session: u64,
}

impl Sessions {
    /// Sessions over rows of the stream's public layout; `schema` is the windowed layout.
    pub fn new(spec: &TumbleSpec, public: &SchemaRef, schema: SchemaRef) -> DFResult<Self> {
        let keys = spec.session_keys.clone().unwrap_or_default();
        let mut fields: Vec<SortField> = keys
            .iter()
            .map(|&k| SortField::new(public.field(k).data_type().clone()))
            .collect();
        if let Some(exprs) = &spec.stagger_keys {
            for key in exprs {
                fields.push(SortField::new(key.0.data_type(public)?));
            }
        }
        Ok(Self {
            gap: spec.size,
            time_index: spec.time_index,
            keys,
            stagger: spec.stagger_keys.clone(),
            converter: RowConverter::new(fields)?,
            schema,
            batches: FastMap::new(),
            next_batch: 0,
            sessions: FastMap::new(),
            by_key: FastMap::new(),
            by_end: BTreeSet::new(),
            next_session: 0,
        })
    }

    /// Files the rows of `batch` (public layout) into sessions. Rows with no time, or that
    /// would open a session the watermark has already passed, are late: their count is returned.
    /// `position(row)` is the row's (shard, counter), when known; a batch comes from one shard
    /// in order, so it is asked only for a session's first row from the batch's shard.
    pub fn accept(
        &mut self,
        batch: &RecordBatch,
        watermark: Option<i64>,
        position: &dyn Fn(usize) -> Option<(u32, u64)>,
    ) -> DFResult<u64> {
        let times = cast(batch.column(self.time_index), &DataType::Int64)?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("cast to Int64");
        let mut key_columns: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|&k| Arc::clone(batch.column(k)))
            .collect();
        for key in self.stagger.iter().flatten() {
            key_columns.push(key.0.evaluate(batch)?.into_array(batch.num_rows())?);
        }
        let keys = if key_columns.is_empty() {
            None
        } else {
            Some(self.converter.convert_columns(&key_columns)?)
        };
        let number = self.next_batch;
        self.next_batch += 1;
        let mut late = 0;
        let mut live = 0;
        let shard = if batch.num_rows() > 0 {
            position(0).map(|(shard, _)| shard)
        } else {
            None
        };
        for row in 0..batch.num_rows() {
            if times.is_null(row) {
                late += 1;
                continue;
            }
            let time = times.value(row);
            let key: &[u8] = match &keys {
                Some(rows) => rows.row(row).data(),
                None => &[],
            };
            if !self.place(key, time, (number, row as u32), watermark, shard, &|| {
                position(row)
            }) {
                late += 1;
                continue;
            }
            live += 1;
        }
        if live > 0 {
            self.batches.insert(
                number,
                Held {
                    batch: batch.clone(),
                    live,
                },
            );
        }
        Ok(late)
    }

    /// Puts one row in its session, opening or merging sessions; false if it is late.
    fn place(
        &mut self,
        key: &[u8],
        time: i64,
        at: (u64, u32),
        watermark: Option<i64>,
        shard: Option<u32>,
        position: &dyn Fn() -> Option<(u32, u64)>,
    ) -> bool {
        let gap = self.gap;
        let stagger = self.stagger.is_some();
        let touches = |s: &Session| {
            if stagger {
                // The window this key's first row opened, while it lasts.
                time >= s.start && time < s.start + gap
            } else {
                time + gap > s.start && time < s.last + gap
            }
        };
        // Most rows join the one window their key has open: they are added in place, so a
        // window of n rows costs n pushes, not n copies of what it holds.
        let mut only = None;
        let mut several = false;
        for id in self.by_key.get(key).into_iter().flatten() {
            if touches(&self.sessions[id]) {
                several = only.is_some();
                only = Some(*id);
                if several {
                    break;
                }
            }
        }
        if let (Some(id), false) = (only, several)
            && let Some(session) = self.sessions.get_mut(&id)
        {
            let before = session.end(gap, stagger);
            session.start = session.start.min(time);
            session.last = session.last.max(time);
            session.rows.push(at);
            // An earlier row of this shard in the session is older than this one.
            let seen = shard.is_some_and(|shard| session.oldest.iter().any(|(s, _)| *s == shard));
            if !seen && let Some((shard, seq)) = position() {
                note_oldest(&mut session.oldest, shard, seq);
            }
            let after = session.end(gap, stagger);
            if after != before {
                self.by_end.remove(&(before, id));
                self.by_end.insert((after, id));
            }
            return true;
        }
        let key: Key = key.into();
        let open = self.by_key.entry(key.clone()).or_default();
        let (touching, apart): (Vec<u64>, Vec<u64>) =
            open.iter().partition(|id| touches(&self.sessions[id]));
        if touching.is_empty() && watermark.is_some_and(|w| time + gap <= w) {
            if open.is_empty() {
                self.by_key.remove(&key);
            }
            return false;
        }
        let mut merged = Session {
            key,
            start: time,
            last: time,
            rows: vec![at],
            oldest: Vec::new(),
        };
        for id in &touching {
            let s = self.sessions.remove(id).expect("open session");
            self.by_end.remove(&(s.end(gap, stagger), *id));
            merged.start = merged.start.min(s.start);
            merged.last = merged.last.max(s.last);
            merged.rows.extend(s.rows);
            for (shard, seq) in s.oldest {
                note_oldest(&mut merged.oldest, shard, seq);
            }
        }
        if let Some((shard, seq)) = position() {
            note_oldest(&mut merged.oldest, shard, seq);
        }
        let id = self.next_session;
        self.next_session += 1;
        self.by_end.insert((merged.end(gap, stagger), id));
        let mut ids = apart;
        ids.push(id);
        self.by_key.insert(merged.key.clone(), ids);
        self.sessions.insert(id, merged);
        true
    }

    /// Closes every session ending at or before `upto` (all of them for `None`), returning
    /// their rows with window columns, in order of session end.
    pub fn close(&mut self, upto: Option<i64>) -> DFResult<Option<RecordBatch>> {
        let mut closed = Vec::new();
        while let Some(&(end, id)) = self.by_end.first() {
            if upto.is_some_and(|w| end > w) {
                break;
            }
            self.by_end.pop_first();
            let session = self.sessions.remove(&id).expect("open session");
            if let Some(ids) = self.by_key.get_mut(&session.key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(&session.key);
                }
            }
            closed.push(session);
        }
        if closed.is_empty() {
            return Ok(None);
        }
        // Gather the rows from the batches holding them.
        let mut order: FastMap<u64, usize> = FastMap::new();
        let mut sources: Vec<&RecordBatch> = Vec::new();
        let mut indices = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for session in &closed {
            for &(number, row) in &session.rows {
                let next = order.len();
                let slot = *order.entry(number).or_insert_with(|| {
                    sources.push(&self.batches[&number].batch);
                    next
                });
                indices.push((slot, row as usize));
                starts.push(session.start);
                ends.push(session.end(self.gap, self.stagger.is_some()));
            }
        }
        let rows = interleave_record_batch(&sources, &indices)?;
        for session in &closed {
            for &(number, _) in &session.rows {
                let held = self.batches.get_mut(&number).expect("held batch");
                held.live -= 1;
                if held.live == 0 {
                    self.batches.remove(&number);
                }
            }
        }
        let time_type = self
            .schema
            .field(self.schema.fields().len() - 1)
            .data_type();
        let mut columns = rows.columns().to_vec();
        columns.push(cast(&Int64Array::from(starts), time_type)?);
        columns.push(cast(&Int64Array::from(ends), time_type)?);
        Ok(Some(RecordBatch::try_new(
            Arc::clone(&self.schema),
            columns,
        )?))
    }

    /// Per shard, the oldest record any open session holds.
    pub fn oldest_held(&self) -> HashMap<u32, u64> {
        let mut held: HashMap<u32, u64> = HashMap::new();
        for session in self.sessions.values() {
            for (shard, seq) in &session.oldest {
                let oldest = held.entry(*shard).or_insert(*seq);
                *oldest = (*oldest).min(*seq);
            }
        }
        held
    }

    /// The earliest end of an open session.
    pub fn next_end(&self) -> Option<i64> {
        self.by_end.first().map(|(end, _)| *end)
    }
}
