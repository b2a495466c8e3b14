//! The machine-learning functions in SQL, as Kinesis Data Analytics programs call them:
//!
//! ```sql
//! SELECT STREAM "TEMP", ANOMALY_SCORE
//! FROM TABLE(RANDOM_CUT_FOREST(CURSOR(SELECT STREAM * FROM "SOURCE_SQL_STREAM_001")));
//! ```
//!
//! The cursor rewrite ([`crate::cursor`]) turns `TABLE(RANDOM_CUT_FOREST(CURSOR(q), …))` into
//! the table function call `random_cut_forest(EXISTS (q), …)`: DataFusion then plans the
//! cursor's query `q` as it plans any subquery (names resolved, streams read through the pump's
//! cursor), and hands the plan to [`MlFunction`] inside the `EXISTS`, which only carries it.
//! The table the function returns runs `q` and passes each row through the model, in order,
//! adding its columns:
//!
//! - `RANDOM_CUT_FOREST(c [, numberOfTrees, subSampleSize, timeDecay, shingleSize])`: the
//!   cursor's columns and `ANOMALY_SCORE` (DOUBLE).
//! - `RANDOM_CUT_FOREST_WITH_EXPLANATION(c [, …, withDirectionality])`: the cursor's columns,
//!   `ANOMALY_SCORE` and `ANOMALY_EXPLANATION`, a JSON object with each numeric column's
//!   `ATTRIBUTION_SCORE` (and with directionality its `STRENGTH` and `DIRECTION`, `HIGH` or
//!   `LOW`).
//! - `HOTSPOTS(c, windowSize, scanRadius, minimumNumberOfPointsInAHotspot)`: the cursor's
//!   columns and `HOTSPOTS_RESULT`, `{"hotspots":[{"density":…,"minValues":[…],"maxValues":[…]}]}`.
//!
//! The models use the cursor's numeric columns, in order, NULL as 0. They start empty when the
//! query (or the pump) starts, as KDA's did when an application started.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result as DFResult, ScalarValue, exec_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;

use super::hotspots::{HotspotParams, Hotspots, hotspots_json};
use super::random_cut_forest::{ForestParams, RandomCutForest};

/// Which function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlKind {
    RandomCutForest,
    RandomCutForestWithExplanation,
    Hotspots,
}

impl MlKind {
    /// Every function, by the name the cursor rewrite calls it.
    pub const ALL: [(&'static str, MlKind); 3] = [
        ("random_cut_forest", MlKind::RandomCutForest),
        (
            "random_cut_forest_with_explanation",
            MlKind::RandomCutForestWithExplanation,
        ),
        ("hotspots", MlKind::Hotspots),
    ];

    fn sql_name(self) -> &'static str {
        match self {
            Self::RandomCutForest => "RANDOM_CUT_FOREST",
            Self::RandomCutForestWithExplanation => "RANDOM_CUT_FOREST_WITH_EXPLANATION",
            Self::Hotspots => "HOTSPOTS",
        }
    }
}

/// The parameters a call gave.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Forest {
        params: ForestParams,
        explain: bool,
        directionality: bool,
    },
    Hotspots(HotspotParams),
}

/// A machine-learning table function (registered under each name of [`MlKind::ALL`]).
#[derive(Debug)]
pub struct MlFunction(pub MlKind);

impl TableFunctionImpl for MlFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let name = self.0.sql_name();
        let Some(Expr::Exists(exists)) = exprs.first() else {
            return plan_err!(
                "{name} reads a cursor: FROM TABLE({name}(CURSOR(SELECT STREAM * FROM stream), …))"
            );
        };
        let plan = exists.subquery.subquery.as_ref().clone();
        let number = |i: usize, what: &str| -> DFResult<Option<f64>> {
            match exprs.get(i) {
                None | Some(Expr::Literal(ScalarValue::Null, _)) => Ok(None),
                Some(Expr::Literal(value, _)) => match cast_number(value) {
                    Some(n) => Ok(Some(n)),
                    None => plan_err!("{name}: {what} is a number, not {value}"),
                },
                Some(other) => plan_err!("{name}: {what} is a number, not {other}"),
            }
        };
        let whole = |i: usize, what: &str, default: usize| -> DFResult<usize> {
            match number(i, what)? {
                None => Ok(default),
                // KDA passes -1 for "the default" in its examples' generated SQL.
                Some(-1.0) => Ok(default),
                Some(n) if n.fract() == 0.0 && n >= 0.0 => Ok(n as usize),
                Some(n) => plan_err!("{name}: {what} is a whole number, not {n}"),
            }
        };
        let model = match self.0 {
            MlKind::RandomCutForest | MlKind::RandomCutForestWithExplanation => {
                let defaults = ForestParams::default();
                let explain = self.0 == MlKind::RandomCutForestWithExplanation;
                let most = if explain { 6 } else { 5 };
                if exprs.len() > most {
                    return plan_err!(
                        "{name} takes (CURSOR(…) [, numberOfTrees, subSampleSize, timeDecay, shingleSize{}]), not {} arguments",
                        if explain { ", withDirectionality" } else { "" },
                        exprs.len()
                    );
                }
                let params = ForestParams {
                    trees: whole(1, "numberOfTrees", defaults.trees)?,
                    sample_size: whole(2, "subSampleSize", defaults.sample_size)?,
                    time_decay: whole(3, "timeDecay", defaults.time_decay as usize)? as f64,
                    shingle_size: whole(4, "shingleSize", defaults.shingle_size)?,
                    seed: defaults.seed,
                };
                params
                    .check()
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                let directionality = match exprs.get(5) {
                    None => false,
                    Some(Expr::Literal(ScalarValue::Boolean(Some(b)), _)) => *b,
                    Some(other) => {
                        return plan_err!(
                            "{name}: withDirectionality is TRUE or FALSE, not {other}"
                        );
                    }
                };
                Model::Forest {
                    params,
                    explain,
                    directionality,
                }
            }
            MlKind::Hotspots => {
                if exprs.len() != 4 {
                    return plan_err!(
                        "HOTSPOTS takes (CURSOR(…), windowSize, scanRadius, minimumNumberOfPointsInAHotspot), not {} arguments",
                        exprs.len()
                    );
                }
                let params = HotspotParams {
                    window_size: whole(1, "windowSize", 0)?,
                    scan_radius: number(2, "scanRadius")?.unwrap_or(0.0),
                    minimum_points: whole(3, "minimumNumberOfPointsInAHotspot", 0)?,
                };
                params
                    .check()
                    .map_err(|e| datafusion::error::DataFusionError::Plan(e.to_string()))?;
                Model::Hotspots(params)
            }
        };
        let input: SchemaRef = Arc::clone(plan.schema().inner());
        let numeric: Vec<usize> = input
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| f.data_type().is_numeric())
            .map(|(i, _)| i)
            .collect();
        if numeric.is_empty() {
            return plan_err!(
                "{name} scores the cursor's numeric columns, and it has none (its columns: {}); select a DOUBLE, INTEGER or BIGINT column in the cursor",
                input
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        match model {
            Model::Forest { explain, .. } => {
                fields.push(Field::new("ANOMALY_SCORE", DataType::Float64, true));
                if explain {
                    fields.push(Field::new("ANOMALY_EXPLANATION", DataType::Utf8, true));
                }
            }
            Model::Hotspots(_) => {
                fields.push(Field::new("HOTSPOTS_RESULT", DataType::Utf8, true));
            }
        }
        Ok(Arc::new(MlTable {
            plan,
            model,
            numeric,
            schema: Arc::new(Schema::new(fields)),
        }))
    }
}

fn cast_number(value: &ScalarValue) -> Option<f64> {
    match value.cast_to(&DataType::Float64).ok()? {
        ScalarValue::Float64(Some(n)) => Some(n),
        _ => None,
    }
}

/// The rows of a cursor with a model's columns added.
#[derive(Debug)]
struct MlTable {
    plan: LogicalPlan,
    model: Model,
    /// The cursor's numeric columns, by position.
    numeric: Vec<usize>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for MlTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let mut input = state.create_physical_plan(&self.plan).await?;
        // One ordered stream: a model sees rows in the order they come.
        if input.output_partitioning().partition_count() > 1 {
            input = Arc::new(CoalescePartitionsExec::new(input));
        }
        let projected = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => Arc::clone(&self.schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&projected)),
            Partitioning::UnknownPartitioning(1),
            input.properties().emission_type,
            input.properties().boundedness,
        );
        Ok(Arc::new(MlExec {
            input,
            model: self.model,
            numeric: self.numeric.clone(),
            schema: Arc::clone(&self.schema),
            projection: projection.cloned(),
            properties: Arc::new(properties),
        }))
    }
}

/// Runs a cursor's plan and passes its rows through a model.
#[derive(Debug)]
struct MlExec {
    input: Arc<dyn ExecutionPlan>,
    model: Model,
    numeric: Vec<usize>,
    /// Before projection.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for MlExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.model {
            Model::Forest { params, .. } => write!(
                f,
                "RandomCutForestExec: trees={}, sample={}, decay={}, shingle={}",
                params.trees, params.sample_size, params.time_decay, params.shingle_size
            ),
            Model::Hotspots(params) => write!(
                f,
                "HotspotsExec: window={}, radius={}, minimum={}",
                params.window_size, params.scan_radius, params.minimum_points
            ),
        }
    }
}

impl ExecutionPlan for MlExec {
    fn name(&self) -> &str {
        "MlExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let Some(input) = children.into_iter().next() else {
            return exec_err!("MlExec has one input");
        };
        Ok(Arc::new(Self {
            input,
            model: self.model,
            numeric: self.numeric.clone(),
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            properties: Arc::clone(&self.properties),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("MlExec has one partition, not {partition}");
        }
        let input = self.input.execute(0, context)?;
        let mut scorer = Scorer::new(self.model, self.numeric.len())?;
        let numeric = self.numeric.clone();
        let schema = Arc::clone(&self.schema);
        let projection = self.projection.clone();
        let out_schema = Arc::clone(&self.properties.eq_properties.schema().clone());
        let rows = input.map(move |batch| {
            let batch = batch?;
            let columns = numeric
                .iter()
                .map(|&i| {
                    let column = cast(batch.column(i), &DataType::Float64)?;
                    Ok(column
                        .as_any()
                        .downcast_ref::<Float64Array>()
                        .cloned()
                        .unwrap_or_else(|| Float64Array::from(vec![0.0; batch.num_rows()])))
                })
                .collect::<DFResult<Vec<Float64Array>>>()?;
            let added = scorer.score(&columns, &batch, &numeric);
            let mut all: Vec<ArrayRef> = batch.columns().to_vec();
            all.extend(added);
            let full = RecordBatch::try_new(Arc::clone(&schema), all)?;
            Ok(match &projection {
                Some(p) => full.project(p)?,
                None => full,
            })
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, rows)))
    }
}

/// A model as it runs: its state, kept across batches.
enum Scorer {
    Forest {
        forest: Box<RandomCutForest>,
        explain: bool,
        directionality: bool,
    },
    Hotspots(Hotspots),
}

impl Scorer {
    fn new(model: Model, dimensions: usize) -> DFResult<Self> {
        let plan = |e: crate::error::Error| datafusion::error::DataFusionError::Plan(e.to_string());
        Ok(match model {
            Model::Forest {
                params,
                explain,
                directionality,
            } => Self::Forest {
                forest: Box::new(RandomCutForest::new(dimensions, params).map_err(plan)?),
                explain,
                directionality,
            },
            Model::Hotspots(params) => {
                Self::Hotspots(Hotspots::new(dimensions, params).map_err(plan)?)
            }
        })
    }

    /// The model's columns for the rows of `batch`, whose numeric columns (`numeric`) are
    /// `columns`.
    fn score(
        &mut self,
        columns: &[Float64Array],
        batch: &RecordBatch,
        numeric: &[usize],
    ) -> Vec<ArrayRef> {
        let rows = batch.num_rows();
        let mut buffer = vec![0.0; columns.len()];
        let mut values = move |row: usize| -> Vec<f64> {
            for (v, c) in buffer.iter_mut().zip(columns) {
                *v = if c.is_valid(row) { c.value(row) } else { 0.0 };
            }
            buffer.clone()
        };
        match self {
            Self::Forest {
                forest,
                explain: false,
                ..
            } => {
                let scores: Float64Array = (0..rows)
                    .map(|row| Some(forest.score_and_update(&values(row))))
                    .collect();
                vec![Arc::new(scores)]
            }
            Self::Forest {
                forest,
                explain: true,
                directionality,
            } => {
                let names: Vec<&str> = numeric
                    .iter()
                    .map(|&i| batch.schema_ref().field(i).name().as_str())
                    .collect();
                let mut scores = Vec::with_capacity(rows);
                let mut explanations = Vec::with_capacity(rows);
                for row in 0..rows {
                    let (score, parts) = forest.explain_and_update(&values(row));
                    scores.push(Some(score));
                    // In the cursor's column order, as KDA wrote it.
                    let mut object = String::from("{");
                    for (d, name) in names.iter().enumerate() {
                        let (high, low) = (parts.high[d], parts.low[d]);
                        if d > 0 {
                            object.push(',');
                        }
                        object.push_str(&serde_json::Value::from(*name).to_string());
                        object.push_str(":{");
                        if *directionality {
                            let direction = if high >= low { "HIGH" } else { "LOW" };
                            object.push_str(&format!(
                                "\"DIRECTION\":\"{direction}\",\"STRENGTH\":\"{:.4}\",",
                                (high - low).abs()
                            ));
                        }
                        object.push_str(&format!("\"ATTRIBUTION_SCORE\":\"{:.4}\"}}", high + low));
                    }
                    object.push('}');
                    explanations.push(Some(object));
                }
                vec![
                    Arc::new(Float64Array::from(scores)),
                    Arc::new(StringArray::from(explanations)),
                ]
            }
            Self::Hotspots(hotspots) => {
                let results: StringArray = (0..rows)
                    .map(|row| Some(hotspots_json(&hotspots.update(&values(row)))))
                    .collect();
                vec![Arc::new(results)]
            }
        }
    }
}

impl fmt::Debug for Scorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Forest { .. } => "Scorer::Forest",
            Self::Hotspots(_) => "Scorer::Hotspots",
        })
    }
}
