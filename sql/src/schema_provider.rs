//! The schema DataFusion resolves table names in: every stream of the engine, live (a stream
//! created over any interface is visible at once), beside ordinary tables such as
//! `CREATE EXTERNAL TABLE`s.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::common::{Result as DFResult, plan_err};
use sluice_engine::Engine;

use crate::continuous::{PumpCursor, continuous_table};
use crate::table::StreamTable;

/// How streams appear as tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamView {
    /// A snapshot of the retained records (`SELECT … FROM stream`).
    Bounded,
    /// Every retained record, then each new one as it arrives (`SELECT STREAM …`).
    Continuous,
}

/// Streams first, then other tables.
#[derive(Debug)]
pub struct StreamSchemaProvider {
    engine: Engine,
    view: StreamView,
    tables: Arc<MemorySchemaProvider>,
    /// A pump's read positions, for continuous views that resume and report progress.
    cursor: Option<Arc<PumpCursor>>,
}

impl StreamSchemaProvider {
    /// Streams as bounded tables, beside a fresh set of other tables.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            view: StreamView::Bounded,
            tables: Arc::new(MemorySchemaProvider::new()),
            cursor: None,
        }
    }

    /// The same streams and other tables, with streams seen as `view`, reading through
    /// `cursor` when given.
    pub fn with_view(&self, view: StreamView, cursor: Option<Arc<PumpCursor>>) -> Self {
        Self {
            engine: self.engine.clone(),
            view,
            tables: Arc::clone(&self.tables),
            cursor,
        }
    }
}

#[async_trait]
impl SchemaProvider for StreamSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .engine
            .streams()
            .iter()
            .map(|s| self.engine.local_name(s.name()).to_string())
            .collect();
        names.extend(self.tables.table_names());
        names
    }

    async fn table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if let Some(stream) = self.engine.try_stream(name) {
            return match self.view {
                StreamView::Bounded => Ok(Some(Arc::new(StreamTable::new(stream)))),
                StreamView::Continuous => continuous_table(stream, self.cursor.clone()).map(Some),
            };
        }
        self.tables.table(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if self.engine.try_stream(&name).is_some() {
            return plan_err!("'{name}' is already a stream; choose another table name");
        }
        self.tables.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> DFResult<Option<Arc<dyn TableProvider>>> {
        if self.engine.try_stream(name).is_some() {
            return plan_err!("'{name}' is a stream; use DROP STREAM {name}");
        }
        self.tables.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.try_stream(name).is_some() || self.tables.table_exist(name)
    }
}
