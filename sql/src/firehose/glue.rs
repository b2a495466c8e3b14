//! A Glue Data Catalog of databases and tables (`AWSGlue.<Action>`, JSON 1.1), enough for
//! Firehose's record format conversion: a table's columns (`StorageDescriptor.Columns`, Hive
//! types) are the schema records are converted into, as on AWS. Kept in `glue.json` in the data
//! folder.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_delivery::record_columns::hive_type;

use super::{FirehoseError, now_seconds, read_json, write_json};

type Result<T, E = FirehoseError> = std::result::Result<T, E>;

/// The `X-Amz-Target` prefix of the API.
pub const TARGET_PREFIX: &str = "AWSGlue.";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Database {
    create_time: f64,
    /// The `DatabaseInput` as given.
    input: Value,
    tables: BTreeMap<String, Table>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Table {
    create_time: f64,
    update_time: f64,
    version: u64,
    /// The `TableInput` as given.
    input: Value,
}

/// The catalog's databases.
#[derive(Debug)]
pub struct GlueCatalog {
    path: PathBuf,
    databases: parking_lot::Mutex<BTreeMap<String, Database>>,
}

fn not_found(what: String) -> FirehoseError {
    FirehoseError::new("EntityNotFoundException", what)
}

fn invalid(what: impl Into<String>) -> FirehoseError {
    FirehoseError::new("InvalidInputException", what)
}

fn name_of<'a>(request: &'a Value, field: &str) -> Result<&'a str> {
    request
        .get(field)
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 255)
        .ok_or_else(|| {
            invalid(format!(
                "{field} is required: a name of 1 to 255 characters"
            ))
        })
}

impl GlueCatalog {
    /// The catalog kept in `data_dir/glue.json`.
    pub fn open(data_dir: &std::path::Path) -> Result<Self> {
        let path = data_dir.join("glue.json");
        let databases = read_json(&path, "the Glue catalog")?;
        Ok(Self {
            path,
            databases: parking_lot::Mutex::new(databases),
        })
    }

    /// Runs `action` with `request`.
    pub fn call(&self, action: &str, request: &Value) -> Result<Value> {
        let mut databases = self.databases.lock();
        let answer = match action {
            "CreateDatabase" => {
                let input = request.get("DatabaseInput").cloned().unwrap_or(Value::Null);
                let name = name_of(&input, "Name")?.to_lowercase();
                if databases.contains_key(&name) {
                    return Err(FirehoseError::new(
                        "AlreadyExistsException",
                        format!("Database already exists: {name}"),
                    ));
                }
                databases.insert(
                    name,
                    Database {
                        create_time: now_seconds(),
                        input,
                        tables: BTreeMap::new(),
                    },
                );
                json!({})
            }
            "GetDatabase" => {
                let name = name_of(request, "Name")?.to_lowercase();
                let database = databases
                    .get(&name)
                    .ok_or_else(|| not_found(format!("Database {name} not found.")))?;
                json!({"Database": database_json(&name, database)})
            }
            "GetDatabases" => {
                let list: Vec<Value> = databases
                    .iter()
                    .map(|(name, d)| database_json(name, d))
                    .collect();
                json!({"DatabaseList": list})
            }
            "DeleteDatabase" => {
                let name = name_of(request, "Name")?.to_lowercase();
                databases
                    .remove(&name)
                    .ok_or_else(|| not_found(format!("Database {name} not found.")))?;
                json!({})
            }
            "CreateTable" | "UpdateTable" => {
                let database_name = name_of(request, "DatabaseName")?.to_lowercase();
                let input = request.get("TableInput").cloned().unwrap_or(Value::Null);
                let name = name_of(&input, "Name")?.to_lowercase();
                columns_of(&input)?;
                let database = databases
                    .get_mut(&database_name)
                    .ok_or_else(|| not_found(format!("Database {database_name} not found.")))?;
                let now = now_seconds();
                match (action, database.tables.get_mut(&name)) {
                    ("CreateTable", Some(_)) => {
                        return Err(FirehoseError::new(
                            "AlreadyExistsException",
                            format!("Table already exists: {name}"),
                        ));
                    }
                    ("CreateTable", None) => {
                        database.tables.insert(
                            name,
                            Table {
                                create_time: now,
                                update_time: now,
                                version: 1,
                                input,
                            },
                        );
                    }
                    (_, Some(table)) => {
                        table.input = input;
                        table.update_time = now;
                        table.version += 1;
                    }
                    (_, None) => {
                        return Err(not_found(format!("Table {name} not found.")));
                    }
                }
                json!({})
            }
            "GetTable" => {
                let database_name = name_of(request, "DatabaseName")?.to_lowercase();
                let name = name_of(request, "Name")?.to_lowercase();
                let table = lookup(&databases, &database_name, &name)?;
                json!({"Table": table_json(&database_name, &name, table)})
            }
            "GetTables" => {
                let database_name = name_of(request, "DatabaseName")?.to_lowercase();
                let database = databases
                    .get(&database_name)
                    .ok_or_else(|| not_found(format!("Database {database_name} not found.")))?;
                let list: Vec<Value> = database
                    .tables
                    .iter()
                    .map(|(name, t)| table_json(&database_name, name, t))
                    .collect();
                json!({"TableList": list})
            }
            "DeleteTable" => {
                let database_name = name_of(request, "DatabaseName")?.to_lowercase();
                let name = name_of(request, "Name")?.to_lowercase();
                databases
                    .get_mut(&database_name)
                    .ok_or_else(|| not_found(format!("Database {database_name} not found.")))?
                    .tables
                    .remove(&name)
                    .ok_or_else(|| not_found(format!("Table {name} not found.")))?;
                json!({})
            }
            other => {
                return Err(FirehoseError::new(
                    "UnknownOperationException",
                    format!(
                        "Sluice's Glue catalog does not implement {other}; it offers Create/Get/Delete Database, Create/Get/Update/Delete Table, GetDatabases and GetTables"
                    ),
                ));
            }
        };
        if matches!(
            action,
            "CreateDatabase" | "DeleteDatabase" | "CreateTable" | "UpdateTable" | "DeleteTable"
        ) {
            write_json(&self.path, &*databases)?;
        }
        Ok(answer)
    }

    /// Table `database.table`'s columns as `record_columns` (`name type, …`).
    pub fn record_columns(&self, database: &str, table: &str) -> Result<String> {
        let databases = self.databases.lock();
        let table = lookup(&databases, &database.to_lowercase(), &table.to_lowercase())?;
        let columns = columns_of(&table.input)?;
        Ok(columns
            .iter()
            .map(|(name, data_type)| format!("`{name}` {data_type}"))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

fn lookup<'a>(
    databases: &'a BTreeMap<String, Database>,
    database: &str,
    table: &str,
) -> Result<&'a Table> {
    databases
        .get(database)
        .ok_or_else(|| not_found(format!("Database {database} not found.")))?
        .tables
        .get(table)
        .ok_or_else(|| not_found(format!("Table {table} not found.")))
}

/// A table's columns (`StorageDescriptor.Columns`), each with a type Sluice converts to.
fn columns_of(input: &Value) -> Result<Vec<(String, String)>> {
    let columns = input
        .pointer("/StorageDescriptor/Columns")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            invalid("TableInput.StorageDescriptor.Columns is required: the table's columns as [{\"Name\": …, \"Type\": …}]")
        })?;
    let mut out = Vec::with_capacity(columns.len());
    for (i, column) in columns.iter().enumerate() {
        let name = column.get("Name").and_then(Value::as_str);
        let data_type = column.get("Type").and_then(Value::as_str);
        let (Some(name), Some(data_type)) = (name, data_type) else {
            return Err(invalid(format!(
                "TableInput.StorageDescriptor.Columns[{i}] needs a Name and a Type"
            )));
        };
        hive_type(data_type).map_err(|e| {
            invalid(format!(
                "TableInput.StorageDescriptor.Columns[{i}] ({name}): {e}"
            ))
        })?;
        out.push((name.to_lowercase(), data_type.to_string()));
    }
    Ok(out)
}

fn database_json(name: &str, database: &Database) -> Value {
    let mut out = database.input.clone();
    if let Some(object) = out.as_object_mut() {
        object.insert("Name".into(), json!(name));
        object.insert("CreateTime".into(), json!(database.create_time));
        object.insert("CatalogId".into(), json!(super::ACCOUNT));
    }
    out
}

fn table_json(database: &str, name: &str, table: &Table) -> Value {
    let mut out = table.input.clone();
    if let Some(object) = out.as_object_mut() {
        object.insert("Name".into(), json!(name));
        object.insert("DatabaseName".into(), json!(database));
        object.insert("CreateTime".into(), json!(table.create_time));
        object.insert("UpdateTime".into(), json!(table.update_time));
        object.insert("VersionId".into(), json!(table.version.to_string()));
        object.insert("CatalogId".into(), json!(super::ACCOUNT));
    }
    out
}
