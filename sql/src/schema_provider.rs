//! The schema DataFusion resolves table names in: every stream of the engine, live (a stream
//! created over any interface is visible at once), beside ordinary tables such as
//! `CREATE EXTERNAL TABLE`s.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider};
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

/// The `sluice` catalog: `public`, the engine's own streams and tables, and one schema per
/// application namespace, so `SELECT … FROM my_app."DESTINATION_SQL_STREAM"` reads an
/// application's in-application stream.
#[derive(Debug)]
pub struct StreamCatalog {
    engine: Engine,
    public: Arc<dyn SchemaProvider>,
    view: StreamView,
    cursor: Option<Arc<PumpCursor>>,
}

impl StreamCatalog {
    pub fn new(
        engine: Engine,
        public: Arc<dyn SchemaProvider>,
        view: StreamView,
        cursor: Option<Arc<PumpCursor>>,
    ) -> Self {
        Self {
            engine,
            public,
            view,
            cursor,
        }
    }

    /// The namespace schema `name` stands for: exactly, or without regard to case when that
    /// is unambiguous (SQL folds unquoted names to lower case).
    fn namespace(&self, name: &str) -> Option<String> {
        if self.engine.namespace_name().is_some() {
            return None;
        }
        let namespaces = self.engine.namespaces();
        if namespaces.iter().any(|n| n == name) {
            return Some(name.to_string());
        }
        let mut folded = namespaces.iter().filter(|n| n.eq_ignore_ascii_case(name));
        match (folded.next(), folded.next()) {
            (Some(one), None) => Some(one.clone()),
            _ => None,
        }
    }
}

impl CatalogProvider for StreamCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = vec!["public".to_string()];
        if self.engine.namespace_name().is_none() {
            names.extend(self.engine.namespaces());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == "public" {
            return Some(Arc::clone(&self.public));
        }
        let namespace = self.engine.namespace(&self.namespace(name)?).ok()?;
        Some(Arc::new(
            StreamSchemaProvider::new(namespace).with_view(self.view, self.cursor.clone()),
        ))
    }

    fn register_schema(
        &self,
        name: &str,
        _schema: Arc<dyn SchemaProvider>,
    ) -> DFResult<Option<Arc<dyn SchemaProvider>>> {
        plan_err!(
            "schemas are not created with SQL in Sluice; '{name}' would be an application's namespace, made by CreateApplication"
        )
    }
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
