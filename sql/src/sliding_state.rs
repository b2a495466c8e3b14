//! Sliding windows computed one row at a time: the fast path of [`crate::sliding`].
//!
//! When every window function of a query is `COUNT`, `SUM`, `AVG`, `MIN` or `MAX` over a
//! numeric argument (or `COUNT(*)`), partitioned by expressions and framed by
//! `RANGE interval PRECEDING` over `ROWTIME` or `ROWS n PRECEDING`, each partition keeps the
//! rows of its frame in a queue with a running sum and count, and monotonic queues for the
//! minimum and maximum: a row costs the same however wide its window. The query's own plan
//! still does everything else: the part below the windows (filters over the stream) runs on
//! each new batch, the window values are added here, and the part above (projections) runs
//! on the result.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef, TimestampMillisecondType};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue};
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    Expr, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use sluice_engine::schema::ROWTIME;

/// What one window function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// How far back a frame reaches.
#[derive(Debug, Clone, Copy)]
enum Frame {
    /// `RANGE ms PRECEDING` over `ROWTIME`.
    Range(i64),
    /// `ROWS n PRECEDING`: the row and the n before it.
    Rows(usize),
}

/// One window function, planned for this path.
struct WindowColumn {
    aggregate: Aggregate,
    /// The argument (`None` for `COUNT(*)`).
    argument: Option<Arc<dyn PhysicalExpr>>,
    partition: Vec<Arc<dyn PhysicalExpr>>,
    frame: Frame,
    output: DataType,
    partitions: HashMap<Box<[u8]>, Partition>,
}

/// The rows of one partition's frame.
#[derive(Default)]
struct Partition {
    /// (rowtime, value) of the rows in the frame, oldest first; the n-th row ever pushed is
    /// `pushed - rows.len() + index`.
    rows: VecDeque<(i64, Option<f64>)>,
    pushed: u64,
    sum: f64,
    count: i64,
    /// Indices (pushed order) of candidates for the minimum and maximum, values monotonic.
    mins: VecDeque<(u64, f64)>,
    maxs: VecDeque<(u64, f64)>,
}

impl Partition {
    fn push(&mut self, time: i64, value: Option<f64>) {
        let index = self.pushed;
        self.pushed += 1;
        self.rows.push_back((time, value));
        if let Some(v) = value {
            self.sum += v;
            self.count += 1;
            while self.mins.back().is_some_and(|(_, m)| *m >= v) {
                self.mins.pop_back();
            }
            self.mins.push_back((index, v));
            while self.maxs.back().is_some_and(|(_, m)| *m <= v) {
                self.maxs.pop_back();
            }
            self.maxs.push_back((index, v));
        }
    }

    fn evict(&mut self, frame: Frame, now: i64) {
        loop {
            let excess = match frame {
                Frame::Range(ms) => self.rows.front().is_some_and(|(t, _)| *t < now - ms),
                Frame::Rows(n) => self.rows.len() > n + 1,
            };
            if !excess {
                break;
            }
            let first = self.pushed - self.rows.len() as u64;
            if let Some((_, Some(v))) = self.rows.pop_front() {
                self.sum -= v;
                self.count -= 1;
            }
            while self.mins.front().is_some_and(|(i, _)| *i <= first) {
                self.mins.pop_front();
            }
            while self.maxs.front().is_some_and(|(i, _)| *i <= first) {
                self.maxs.pop_front();
            }
        }
    }

    fn value(&self, aggregate: Aggregate) -> Option<f64> {
        match aggregate {
            Aggregate::Count => Some(self.count as f64),
            Aggregate::Sum => (self.count > 0).then_some(self.sum),
            Aggregate::Avg => (self.count > 0).then(|| self.sum / self.count as f64),
            Aggregate::Min => self.mins.front().map(|(_, v)| *v),
            Aggregate::Max => self.maxs.front().map(|(_, v)| *v),
        }
    }
}

/// The window functions of a query, computed row by row.
pub struct SlidingState {
    columns: Vec<WindowColumn>,
    /// The schema rows arrive in (the windows' input) and leave in (with the window columns).
    output: SchemaRef,
}

impl SlidingState {
    /// Plans `windows` (the window expressions of a chain of window nodes, bottom first) over
    /// rows of `input`; `None` if some function or frame is not one this path computes.
    pub fn plan(windows: &[Expr], input: &DFSchema, output: SchemaRef) -> DFResult<Option<Self>> {
        let planner = SessionContext::new();
        let mut columns = Vec::new();
        for (i, expr) in windows.iter().enumerate() {
            let Expr::WindowFunction(window) = expr else {
                return Ok(None);
            };
            let Some(column) = Self::column(&planner, window, input)? else {
                return Ok(None);
            };
            let position = input.fields().len() + i;
            let Some(field) = output.fields().get(position) else {
                return Ok(None);
            };
            columns.push(WindowColumn {
                output: field.data_type().clone(),
                ..column
            });
        }
        if input.index_of_column_by_name(None, ROWTIME).is_none() {
            return Ok(None);
        }
        Ok(Some(Self { columns, output }))
    }

    fn column(
        planner: &SessionContext,
        window: &WindowFunction,
        input: &DFSchema,
    ) -> DFResult<Option<WindowColumn>> {
        let WindowFunctionDefinition::AggregateUDF(udaf) = &window.fun else {
            return Ok(None);
        };
        let params = &window.params;
        if params.distinct || params.filter.is_some() {
            return Ok(None);
        }
        let aggregate = match udaf.name() {
            "count" => Aggregate::Count,
            "sum" => Aggregate::Sum,
            "avg" => Aggregate::Avg,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            _ => return Ok(None),
        };
        let frame = &params.window_frame;
        if !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
            return Ok(None);
        }
        let WindowFrameBound::Preceding(start) = &frame.start_bound else {
            return Ok(None);
        };
        let frame = match (frame.units, start) {
            (WindowFrameUnits::Range, start) => match super::sliding::interval_millis(start) {
                Some(ms) => Frame::Range(ms),
                None => return Ok(None),
            },
            (WindowFrameUnits::Rows, ScalarValue::UInt64(Some(n))) => {
                Frame::Rows(usize::try_from(*n).unwrap_or(usize::MAX))
            }
            _ => return Ok(None),
        };
        let argument = match params.args.as_slice() {
            [] => None,
            // COUNT(*) is planned as count(1).
            [Expr::Literal(_, _)] if aggregate == Aggregate::Count => None,
            [argument] => {
                let physical = planner.create_physical_expr(argument.clone(), input)?;
                let numeric = physical
                    .data_type(input.as_arrow())
                    .is_ok_and(|t| t.is_numeric());
                if !numeric {
                    return Ok(None);
                }
                Some(physical)
            }
            _ => return Ok(None),
        };
        let partition = params
            .partition_by
            .iter()
            .map(|e| planner.create_physical_expr(e.clone(), input))
            .collect::<DFResult<Vec<_>>>()?;
        Ok(Some(WindowColumn {
            aggregate,
            argument,
            partition,
            frame,
            output: DataType::Float64,
            partitions: HashMap::new(),
        }))
    }

    /// Adds the window columns to `rows` (the windows' input, in arrival order).
    pub fn apply(&mut self, rows: &RecordBatch) -> DFResult<RecordBatch> {
        let schema = rows.schema();
        let times = cast(
            rows.column(schema.index_of(ROWTIME)?),
            &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
        )?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let mut out: Vec<ArrayRef> = rows.columns().to_vec();
        for column in &mut self.columns {
            let values = match &column.argument {
                Some(argument) => {
                    let values = argument.evaluate(rows)?.into_array(rows.num_rows())?;
                    Some(cast(&values, &DataType::Float64)?)
                }
                None => None,
            };
            let values = values.as_ref().map(|v| v.as_primitive::<Float64Type>());
            let keys = column
                .partition
                .iter()
                .map(|k| k.evaluate(rows)?.into_array(rows.num_rows()))
                .collect::<DFResult<Vec<_>>>()?;
            // Without PARTITION BY every row is in one partition (the empty key).
            let encoded = if keys.is_empty() {
                None
            } else {
                let converter = RowConverter::new(
                    keys.iter()
                        .map(|k| SortField::new(k.data_type().clone()))
                        .collect(),
                )?;
                Some(converter.convert_columns(&keys)?)
            };
            let mut results = Vec::with_capacity(rows.num_rows());
            for row in 0..rows.num_rows() {
                let time = if times.is_valid(row) {
                    times.value(row)
                } else {
                    i64::MIN
                };
                let value = match values {
                    Some(v) => v.is_valid(row).then(|| v.value(row)),
                    None => Some(1.0),
                };
                let key: Box<[u8]> = encoded
                    .as_ref()
                    .map_or(Box::default(), |rows| rows.row(row).data().into());
                let partition = column.partitions.entry(key).or_default();
                partition.push(time, value);
                partition.evict(column.frame, time);
                results.push(partition.value(column.aggregate));
            }
            let computed: ArrayRef = match column.aggregate {
                Aggregate::Count => Arc::new(Int64Array::from_iter(
                    results.iter().map(|v| v.map(|v| v as i64)),
                )),
                _ => Arc::new(Float64Array::from(results)),
            };
            out.push(cast(&computed, &column.output)?);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.output), out)?)
    }

    /// Drops partitions whose every row has left its `RANGE` frame as of `now`.
    pub fn forget_quiet(&mut self, now: i64) {
        for column in &mut self.columns {
            if let Frame::Range(ms) = column.frame {
                column
                    .partitions
                    .retain(|_, p| p.rows.back().is_some_and(|(t, _)| *t >= now - ms));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_keeps_its_frame_and_its_extremes() {
        let mut p = Partition::default();
        let frame = Frame::Range(1_000);
        for (t, v) in [(0, 5.0), (400, 1.0), (800, 3.0), (1_200, 4.0), (1_900, 2.0)] {
            p.push(t, Some(v));
            p.evict(frame, t);
        }
        // At 1900 the frame is [900, 1900]: 4.0 and 2.0.
        assert_eq!(p.value(Aggregate::Count), Some(2.0));
        assert_eq!(p.value(Aggregate::Sum), Some(6.0));
        assert_eq!(p.value(Aggregate::Min), Some(2.0));
        assert_eq!(p.value(Aggregate::Max), Some(4.0));
        let mut rows = Partition::default();
        for v in [5.0, 1.0, 3.0, 4.0] {
            rows.push(0, Some(v));
            rows.evict(Frame::Rows(2), 0);
        }
        assert_eq!(rows.value(Aggregate::Min), Some(1.0));
        assert_eq!(rows.value(Aggregate::Avg), Some(8.0 / 3.0));
        rows.push(0, None);
        rows.evict(Frame::Rows(2), 0);
        assert_eq!(rows.value(Aggregate::Max), Some(4.0));
        assert_eq!(rows.value(Aggregate::Count), Some(2.0));
    }
}
