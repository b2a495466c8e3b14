//! The Kinesis Analytics for SQL API (`KinesisAnalytics_20150814.<Action>`, JSON 1.1): each
//! action's request read and checked as KDA checks it, run on [`Applications`], and answered
//! in KDA's shapes. The HTTP side (SigV4, error envelopes) is the Kinesis endpoint's.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::discover::discover;
use super::error::{ApplicationError, ErrorKind};
use super::input::{InputMapper, InputSchema};
use super::manager::{Applications, now_seconds};
use super::model::{
    Application, ApplicationStatus, CloudWatchLoggingOption, Input, Output, ReferenceDataSource,
    application_arn, name_in_arn,
};
use crate::parser::SluiceStatement;

type Result<T, E = ApplicationError> = std::result::Result<T, E>;

/// The `X-Amz-Target` prefix of the API.
pub const TARGET_PREFIX: &str = "KinesisAnalytics_20150814.";

/// Longest application code KDA takes (bytes).
const MAX_CODE_BYTES: usize = 102_400;
/// Tags per application.
const MAX_TAGS: usize = 50;
/// Records `DiscoverInputSchema` samples.
const DISCOVERY_SAMPLES: usize = 100;

/// Runs `action` with `request` on `apps`.
pub async fn call(apps: &Applications, action: &str, request: Value) -> Result<Value> {
    match action {
        "CreateApplication" => create_application(apps, &request).await,
        "DescribeApplication" => {
            let app = apps.get(&application_name(&request)?).await?;
            Ok(json!({"ApplicationDetail": detail(&app)}))
        }
        "ListApplications" => list_applications(apps, &request).await,
        "DeleteApplication" => {
            let name = application_name(&request)?;
            let created = request.get("CreateTimestamp").and_then(Value::as_f64);
            if created.is_none() {
                return Err(ApplicationError::invalid(
                    "CreateTimestamp is required: the application's CreateTimestamp from DescribeApplication",
                ));
            }
            apps.delete(&name, created).await?;
            Ok(json!({}))
        }
        "StartApplication" => start_application(apps, &request).await,
        "StopApplication" => {
            apps.stop(&application_name(&request)?).await?;
            Ok(json!({}))
        }
        "UpdateApplication" => update_application(apps, &request).await,
        "AddApplicationInput" => {
            let mut input: Input = member(&request, "Input")?;
            check_input(&input, "Input")?;
            change(apps, &request, move |app| {
                if !app.inputs.is_empty() {
                    return Err(ApplicationError::new(
                        ErrorKind::InvalidArgument,
                        format!(
                            "Application {} already has an input; an application has at most one",
                            app.application_name
                        ),
                    ));
                }
                input.input_id = app.take_id();
                app.inputs.push(input);
                Ok(())
            })
            .await
        }
        "AddApplicationOutput" => {
            let mut output: Output = member(&request, "Output")?;
            check_output(&output, "Output")?;
            change(apps, &request, move |app| {
                if app.outputs.len() >= 3 {
                    return Err(ApplicationError::new(
                        ErrorKind::LimitExceeded,
                        "An application has at most 3 outputs",
                    ));
                }
                output.output_id = app.take_id();
                app.outputs.push(output);
                Ok(())
            })
            .await
        }
        "DeleteApplicationOutput" => {
            let id = string(&request, "OutputId")?;
            change(apps, &request, move |app| {
                let before = app.outputs.len();
                app.outputs.retain(|o| o.output_id != id);
                if app.outputs.len() == before {
                    return Err(ApplicationError::new(
                        ErrorKind::ResourceNotFound,
                        format!(
                            "Output {id} not found in application {}",
                            app.application_name
                        ),
                    ));
                }
                Ok(())
            })
            .await
        }
        "AddApplicationReferenceDataSource" => {
            let mut source: ReferenceDataSource = member(&request, "ReferenceDataSource")?;
            check_reference(&source, "ReferenceDataSource")?;
            change(apps, &request, move |app| {
                if app
                    .reference_data_sources
                    .iter()
                    .any(|r| r.table_name == source.table_name)
                {
                    return Err(ApplicationError::invalid(format!(
                        "ReferenceDataSource.TableName: application {} already has a reference table {}",
                        app.application_name, source.table_name
                    )));
                }
                source.reference_id = app.take_id();
                app.reference_data_sources.push(source);
                Ok(())
            })
            .await
        }
        "DeleteApplicationReferenceDataSource" => {
            let id = string(&request, "ReferenceId")?;
            change(apps, &request, move |app| {
                let before = app.reference_data_sources.len();
                app.reference_data_sources.retain(|r| r.reference_id != id);
                if app.reference_data_sources.len() == before {
                    return Err(ApplicationError::new(
                        ErrorKind::ResourceNotFound,
                        format!(
                            "Reference data source {id} not found in application {}",
                            app.application_name
                        ),
                    ));
                }
                Ok(())
            })
            .await
        }
        "AddApplicationCloudWatchLoggingOption" => {
            let mut option: CloudWatchLoggingOption = member(&request, "CloudWatchLoggingOption")?;
            change(apps, &request, move |app| {
                option.cloud_watch_logging_option_id = app.take_id();
                app.cloud_watch_logging_options.push(option);
                Ok(())
            })
            .await
        }
        "DeleteApplicationCloudWatchLoggingOption" => {
            let id = string(&request, "CloudWatchLoggingOptionId")?;
            change(apps, &request, move |app| {
                app.cloud_watch_logging_options
                    .retain(|o| o.cloud_watch_logging_option_id != id);
                Ok(())
            })
            .await
        }
        "AddApplicationInputProcessingConfiguration"
        | "DeleteApplicationInputProcessingConfiguration" => {
            Err(lambda_refused("InputProcessingConfiguration"))
        }
        "DiscoverInputSchema" => discover_input_schema(apps, &request).await,
        "TagResource" => {
            let name = resource_application(&request)?;
            let tags = tag_list(&request, "Tags")?;
            apps.update(&name, None, move |app| {
                app.tags.extend(tags);
                check_tag_count(app.tags.len())
            })
            .await?;
            Ok(json!({}))
        }
        "UntagResource" => {
            let name = resource_application(&request)?;
            let keys: Vec<String> = member(&request, "TagKeys")?;
            apps.update(&name, None, move |app| {
                for key in &keys {
                    app.tags.remove(key);
                }
                Ok(())
            })
            .await?;
            Ok(json!({}))
        }
        "ListTagsForResource" => {
            let app = apps.get(&resource_application(&request)?).await?;
            let tags: Vec<Value> = app
                .tags
                .iter()
                .map(|(k, v)| json!({"Key": k, "Value": v}))
                .collect();
            Ok(json!({"Tags": tags}))
        }
        other => Err(ApplicationError::new(
            ErrorKind::UnsupportedOperation,
            format!(
                "Operation {other} is not supported by Sluice's Kinesis Analytics API (the SQL applications API, 2015-08-14)"
            ),
        )),
    }
}

/// Applies `edit` to the application the request names, at its `CurrentApplicationVersionId`.
async fn change(
    apps: &Applications,
    request: &Value,
    edit: impl FnOnce(&mut Application) -> Result<()>,
) -> Result<Value> {
    let name = application_name(request)?;
    let version = current_version(request)?;
    apps.update(&name, Some(version), edit).await?;
    Ok(json!({}))
}

async fn create_application(apps: &Applications, request: &Value) -> Result<Value> {
    let name = application_name(request)?;
    if name == sluice_engine::DIRECT_PUT_NAMESPACE {
        return Err(ApplicationError::invalid(format!(
            "ApplicationName '{name}' is reserved in Sluice for the records of Firehose direct-put delivery streams; choose another name"
        )));
    }
    let description = optional_string(request, "ApplicationDescription")?;
    if description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(ApplicationError::invalid(
            "ApplicationDescription is longer than 1024 characters",
        ));
    }
    let code = optional_string(request, "ApplicationCode")?.unwrap_or_default();
    check_code(&code)?;
    let mut inputs: Vec<Input> = optional_member(request, "Inputs")?.unwrap_or_default();
    let mut outputs: Vec<Output> = optional_member(request, "Outputs")?.unwrap_or_default();
    let mut logging: Vec<CloudWatchLoggingOption> =
        optional_member(request, "CloudWatchLoggingOptions")?.unwrap_or_default();
    if inputs.len() > 1 {
        return Err(ApplicationError::invalid(
            "Inputs: an application has at most one input",
        ));
    }
    if outputs.len() > 3 {
        return Err(ApplicationError::new(
            ErrorKind::LimitExceeded,
            "Outputs: an application has at most 3 outputs",
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        check_input(input, &format!("Inputs[{i}]"))?;
    }
    for (i, output) in outputs.iter().enumerate() {
        check_output(output, &format!("Outputs[{i}]"))?;
    }
    let tags = if request.get("Tags").is_some() {
        tag_list(request, "Tags")?
    } else {
        BTreeMap::new()
    };
    check_tag_count(tags.len())?;
    let now = now_seconds(apps_engine(apps));
    let mut app = Application {
        application_name: name,
        application_description: description,
        application_code: code,
        inputs: Vec::new(),
        outputs: Vec::new(),
        reference_data_sources: Vec::new(),
        cloud_watch_logging_options: Vec::new(),
        tags,
        application_status: ApplicationStatus::Ready,
        application_version_id: 1,
        create_timestamp: now,
        last_update_timestamp: now,
        code_version_run: None,
        next_id: 0,
    };
    for input in &mut inputs {
        input.input_id = app.take_id();
    }
    for output in &mut outputs {
        output.output_id = app.take_id();
    }
    for option in &mut logging {
        option.cloud_watch_logging_option_id = app.take_id();
    }
    app.inputs = inputs;
    app.outputs = outputs;
    app.cloud_watch_logging_options = logging;
    let app = apps.create(app).await?;
    Ok(json!({"ApplicationSummary": summary(&app)}))
}

fn apps_engine(apps: &Applications) -> &sluice_engine::Engine {
    apps.engine()
}

async fn list_applications(apps: &Applications, request: &Value) -> Result<Value> {
    let limit = match request.get("Limit") {
        None | Some(Value::Null) => 50,
        Some(value) => match value.as_u64() {
            Some(n @ 1..=50) => n as usize,
            _ => {
                return Err(ApplicationError::invalid(format!(
                    "Limit {value} is not a whole number from 1 to 50"
                )));
            }
        },
    };
    let after = optional_string(request, "ExclusiveStartApplicationName")?;
    let all = apps.list().await;
    let rest: Vec<&Application> = all
        .iter()
        .filter(|a| {
            after
                .as_ref()
                .is_none_or(|after| &a.application_name > after)
        })
        .collect();
    let page: Vec<Value> = rest.iter().take(limit).map(|a| summary(a)).collect();
    Ok(json!({
        "ApplicationSummaries": page,
        "HasMoreApplications": rest.len() > limit,
    }))
}

async fn start_application(apps: &Applications, request: &Value) -> Result<Value> {
    let name = application_name(request)?;
    let mut positions = HashMap::new();
    if let Some(configurations) = request.get("InputConfigurations") {
        let Some(configurations) = configurations.as_array() else {
            return Err(ApplicationError::invalid(
                "InputConfigurations is a list of {Id, InputStartingPositionConfiguration}",
            ));
        };
        for (i, configuration) in configurations.iter().enumerate() {
            let id = configuration
                .get("Id")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApplicationError::invalid(format!("InputConfigurations[{i}].Id is required"))
                })?;
            let position = configuration
                .pointer("/InputStartingPositionConfiguration/InputStartingPosition")
                .and_then(Value::as_str)
                .unwrap_or("NOW");
            if !matches!(position, "NOW" | "TRIM_HORIZON" | "LAST_STOPPED_POINT") {
                return Err(ApplicationError::invalid(format!(
                    "InputConfigurations[{i}].InputStartingPositionConfiguration.InputStartingPosition '{position}' is not NOW, TRIM_HORIZON or LAST_STOPPED_POINT"
                )));
            }
            positions.insert(id.to_string(), position.to_string());
        }
    }
    apps.start(&name, &positions).await?;
    Ok(json!({}))
}

async fn update_application(apps: &Applications, request: &Value) -> Result<Value> {
    let update = request
        .get("ApplicationUpdate")
        .cloned()
        .ok_or_else(|| ApplicationError::invalid("ApplicationUpdate is required"))?;
    if let Some(code) = update.get("ApplicationCodeUpdate") {
        check_code(code.as_str().ok_or_else(|| {
            ApplicationError::invalid("ApplicationUpdate.ApplicationCodeUpdate is a string")
        })?)?;
    }
    change(apps, request, move |app| apply_update(app, &update)).await
}

/// Applies an `ApplicationUpdate` to `app`.
fn apply_update(app: &mut Application, update: &Value) -> Result<()> {
    if let Some(code) = update.get("ApplicationCodeUpdate").and_then(Value::as_str) {
        app.application_code = code.to_string();
    }
    for (i, change) in list(update, "InputUpdates")?.iter().enumerate() {
        let field = format!("ApplicationUpdate.InputUpdates[{i}]");
        let id = change.get("InputId").and_then(Value::as_str).unwrap_or("");
        let input = app
            .inputs
            .iter_mut()
            .find(|x| x.input_id == id)
            .ok_or_else(|| {
                ApplicationError::new(
                    ErrorKind::ResourceNotFound,
                    format!("{field}.InputId: no input {id}"),
                )
            })?;
        if change.get("InputProcessingConfigurationUpdate").is_some() {
            return Err(lambda_refused("InputProcessingConfigurationUpdate"));
        }
        if let Some(prefix) = change.get("NamePrefixUpdate").and_then(Value::as_str) {
            input.name_prefix = prefix.to_string();
        }
        if let Some(stream) = change.get("KinesisStreamsInputUpdate") {
            let resource =
                input
                    .kinesis_streams_input
                    .get_or_insert_with(|| super::model::Resource {
                        resource_arn: String::new(),
                        role_arn: None,
                    });
            if let Some(arn) = stream.get("ResourceARNUpdate").and_then(Value::as_str) {
                resource.resource_arn = arn.to_string();
            }
            if let Some(role) = stream.get("RoleARNUpdate").and_then(Value::as_str) {
                resource.role_arn = Some(role.to_string());
            }
        }
        if let Some(count) = change
            .pointer("/InputParallelismUpdate/CountUpdate")
            .and_then(Value::as_u64)
        {
            input.input_parallelism = Some(super::model::InputParallelism {
                count: count as u32,
            });
        }
        if let Some(schema) = change.get("InputSchemaUpdate") {
            if let Some(format) = schema.get("RecordFormatUpdate") {
                input.input_schema.record_format = from_value(format.clone(), &field)?;
            }
            if let Some(encoding) = schema.get("RecordEncodingUpdate").and_then(Value::as_str) {
                input.input_schema.record_encoding = Some(encoding.to_string());
            }
            if let Some(columns) = schema.get("RecordColumnUpdates") {
                input.input_schema.record_columns = from_value(columns.clone(), &field)?;
            }
        }
        check_input(input, &field)?;
    }
    for (i, change) in list(update, "OutputUpdates")?.iter().enumerate() {
        let field = format!("ApplicationUpdate.OutputUpdates[{i}]");
        let id = change.get("OutputId").and_then(Value::as_str).unwrap_or("");
        let output = app
            .outputs
            .iter_mut()
            .find(|x| x.output_id == id)
            .ok_or_else(|| {
                ApplicationError::new(
                    ErrorKind::ResourceNotFound,
                    format!("{field}.OutputId: no output {id}"),
                )
            })?;
        if change.get("LambdaOutputUpdate").is_some() {
            return Err(lambda_refused("LambdaOutputUpdate"));
        }
        if let Some(name) = change.get("NameUpdate").and_then(Value::as_str) {
            output.name = name.to_string();
        }
        for (key, firehose) in [
            ("KinesisStreamsOutputUpdate", false),
            ("KinesisFirehoseOutputUpdate", true),
        ] {
            if let Some(target) = change.get(key) {
                let resource = super::model::Resource {
                    resource_arn: target
                        .get("ResourceARNUpdate")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    role_arn: target
                        .get("RoleARNUpdate")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                };
                if firehose {
                    output.kinesis_firehose_output = Some(resource);
                    output.kinesis_streams_output = None;
                } else {
                    output.kinesis_streams_output = Some(resource);
                    output.kinesis_firehose_output = None;
                }
            }
        }
        if let Some(schema) = change.get("DestinationSchemaUpdate") {
            output.destination_schema = from_value(schema.clone(), &field)?;
        }
        check_output(output, &field)?;
    }
    for (i, change) in list(update, "ReferenceDataSourceUpdates")?
        .iter()
        .enumerate()
    {
        let field = format!("ApplicationUpdate.ReferenceDataSourceUpdates[{i}]");
        let id = change
            .get("ReferenceId")
            .and_then(Value::as_str)
            .unwrap_or("");
        let source = app
            .reference_data_sources
            .iter_mut()
            .find(|x| x.reference_id == id)
            .ok_or_else(|| {
                ApplicationError::new(
                    ErrorKind::ResourceNotFound,
                    format!("{field}.ReferenceId: no reference data source {id}"),
                )
            })?;
        if let Some(name) = change.get("TableNameUpdate").and_then(Value::as_str) {
            source.table_name = name.to_string();
        }
        if let Some(s3) = change.get("S3ReferenceDataSourceUpdate") {
            let target = &mut source.s3_reference_data_source;
            if let Some(bucket) = s3.get("BucketARNUpdate").and_then(Value::as_str) {
                target.bucket_arn = bucket.to_string();
            }
            if let Some(key) = s3.get("FileKeyUpdate").and_then(Value::as_str) {
                target.file_key = key.to_string();
            }
            if let Some(role) = s3.get("ReferenceRoleARNUpdate").and_then(Value::as_str) {
                target.reference_role_arn = Some(role.to_string());
            }
        }
        if let Some(schema) = change.get("ReferenceSchemaUpdate") {
            source.reference_schema = from_value(schema.clone(), &field)?;
        }
        check_reference(source, &field)?;
    }
    for change in list(update, "CloudWatchLoggingOptionUpdates")? {
        let id = change
            .get("CloudWatchLoggingOptionId")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(option) = app
            .cloud_watch_logging_options
            .iter_mut()
            .find(|o| o.cloud_watch_logging_option_id == id)
        {
            if let Some(arn) = change.get("LogStreamARNUpdate").and_then(Value::as_str) {
                option.log_stream_arn = arn.to_string();
            }
            if let Some(role) = change.get("RoleARNUpdate").and_then(Value::as_str) {
                option.role_arn = Some(role.to_string());
            }
        }
    }
    Ok(())
}

async fn discover_input_schema(apps: &Applications, request: &Value) -> Result<Value> {
    if request.get("InputProcessingConfiguration").is_some() {
        return Err(lambda_refused("InputProcessingConfiguration"));
    }
    if request.get("S3Configuration").is_some() {
        return Err(ApplicationError::new(
            ErrorKind::UnsupportedOperation,
            "S3Configuration: Sluice discovers schemas from streams; give ResourceARN",
        ));
    }
    let arn = string(request, "ResourceARN")?;
    let name = name_in_arn(&arn, "kinesis", "stream").ok_or_else(|| {
        ApplicationError::invalid(format!("ResourceARN '{arn}' is not a Kinesis stream ARN"))
    })?;
    let stream = apps.engine().stream(name).map_err(|_| {
        ApplicationError::new(
            ErrorKind::ResourceNotFound,
            format!(
                "Stream {name} under account {} not found.",
                super::model::ACCOUNT
            ),
        )
    })?;
    let position = request
        .pointer("/InputStartingPositionConfiguration/InputStartingPosition")
        .and_then(Value::as_str)
        .unwrap_or("TRIM_HORIZON");
    let start = match position {
        "NOW" => {
            return Err(ApplicationError::new(
                ErrorKind::UnableToDetectSchema,
                "No records arrive at NOW while discovering; use TRIM_HORIZON to sample the records the stream holds",
            ));
        }
        "TRIM_HORIZON" | "LAST_STOPPED_POINT" => sluice_engine::StartPosition::TrimHorizon,
        other => {
            return Err(ApplicationError::invalid(format!(
                "InputStartingPositionConfiguration.InputStartingPosition '{other}' is not NOW, TRIM_HORIZON or LAST_STOPPED_POINT"
            )));
        }
    };
    let samples = tokio::task::spawn_blocking(move || sample(&stream, start))
        .await
        .map_err(|e| ApplicationError::internal(e.to_string()))??;
    if samples.is_empty() {
        return Err(ApplicationError::new(
            ErrorKind::UnableToDetectSchema,
            format!("No data found in stream {name} to discover a schema from; put records first"),
        ));
    }
    let refs: Vec<&[u8]> = samples.iter().map(Vec::as_slice).collect();
    let discovered = discover(&refs)
        .map_err(|e| ApplicationError::new(ErrorKind::UnableToDetectSchema, e.to_string()))?;
    let raw: Vec<String> = samples
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    Ok(json!({
        "InputSchema": discovered.input_schema,
        "ParsedInputRecords": discovered.parsed,
        "ProcessedInputRecords": raw,
        "RawInputRecords": discovered.raw,
    }))
}

/// Up to [`DISCOVERY_SAMPLES`] records of `stream`, oldest first per shard.
fn sample(
    stream: &std::sync::Arc<sluice_engine::Stream>,
    start: sluice_engine::StartPosition,
) -> Result<Vec<Vec<u8>>> {
    use datafusion::arrow::array::{Array, AsArray};
    let mut samples = Vec::new();
    for shard in stream.shard_definitions() {
        let mut reader = sluice_engine::ShardIterator::new(stream, shard.index, start.clone())
            .map_err(|e| ApplicationError::internal(e.to_string()))?;
        while samples.len() < DISCOVERY_SAMPLES {
            let batches = reader
                .next_batches(DISCOVERY_SAMPLES)
                .map_err(|e| ApplicationError::internal(e.to_string()))?;
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                let Some(data) = batch
                    .column_by_name(sluice_engine::schema::DATA)
                    .map(|c| c.as_binary::<i32>().clone())
                else {
                    continue;
                };
                for row in 0..data.len() {
                    if samples.len() < DISCOVERY_SAMPLES && data.is_valid(row) {
                        samples.push(data.value(row).to_vec());
                    }
                }
            }
        }
    }
    Ok(samples)
}

/// An application's summary, as `CreateApplication` and `ListApplications` give it.
fn summary(app: &Application) -> Value {
    json!({
        "ApplicationName": app.application_name,
        "ApplicationARN": app.arn(),
        "ApplicationStatus": app.application_status,
    })
}

/// An application, as `DescribeApplication` gives it.
fn detail(app: &Application) -> Value {
    let inputs: Vec<Value> = app
        .inputs
        .iter()
        .map(|input| {
            let mut value = json!({
                "InputId": input.input_id,
                "NamePrefix": input.name_prefix,
                "InAppStreamNames": input.in_app_stream_names(),
                "InputSchema": input.input_schema,
                "InputParallelism": {"Count": input.parallelism()},
            });
            if let Some(stream) = &input.kinesis_streams_input {
                value["KinesisStreamsInputDescription"] = json!(stream);
            }
            if let Some(firehose) = &input.kinesis_firehose_input {
                value["KinesisFirehoseInputDescription"] = json!(firehose);
            }
            if let Some(position) = &input.input_starting_position_configuration {
                value["InputStartingPositionConfiguration"] = json!(position);
            }
            value
        })
        .collect();
    let outputs: Vec<Value> = app
        .outputs
        .iter()
        .map(|output| {
            let mut value = json!({
                "OutputId": output.output_id,
                "Name": output.name,
                "DestinationSchema": output.destination_schema,
            });
            if let Some(stream) = &output.kinesis_streams_output {
                value["KinesisStreamsOutputDescription"] = json!(stream);
            }
            if let Some(firehose) = &output.kinesis_firehose_output {
                value["KinesisFirehoseOutputDescription"] = json!(firehose);
            }
            value
        })
        .collect();
    let references: Vec<Value> = app
        .reference_data_sources
        .iter()
        .map(|source| {
            json!({
                "ReferenceId": source.reference_id,
                "TableName": source.table_name,
                "S3ReferenceDataSourceDescription": source.s3_reference_data_source,
                "ReferenceSchema": source.reference_schema,
            })
        })
        .collect();
    let mut value = json!({
        "ApplicationName": app.application_name,
        "ApplicationARN": app.arn(),
        "ApplicationStatus": app.application_status,
        "CreateTimestamp": app.create_timestamp,
        "LastUpdateTimestamp": app.last_update_timestamp,
        "InputDescriptions": inputs,
        "OutputDescriptions": outputs,
        "ReferenceDataSourceDescriptions": references,
        "CloudWatchLoggingOptionDescriptions": app.cloud_watch_logging_options,
        "ApplicationCode": app.application_code,
        "ApplicationVersionId": app.application_version_id,
    });
    if let Some(description) = &app.application_description {
        value["ApplicationDescription"] = json!(description);
    }
    value
}

fn check_code(code: &str) -> Result<()> {
    if code.len() > MAX_CODE_BYTES {
        return Err(ApplicationError::invalid(format!(
            "ApplicationCode is {} bytes; at most {MAX_CODE_BYTES} are allowed",
            code.len()
        )));
    }
    let statements = crate::parser::parse_statements(code)
        .map_err(|e| ApplicationError::new(ErrorKind::CodeValidation, e.to_string()))?;
    // Code makes streams and pumps; a query on its own would have nowhere to send its rows
    // (and a continuous one would never finish starting the application).
    for statement in &statements {
        let query = match statement {
            SluiceStatement::SelectStream(_) => true,
            SluiceStatement::DataFusion(inner) => matches!(
                inner.as_ref(),
                datafusion::sql::parser::Statement::Statement(s)
                    if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_))
            ),
            _ => false,
        };
        if query {
            return Err(ApplicationError::new(
                ErrorKind::CodeValidation,
                "ApplicationCode: a SELECT on its own has nowhere to send its rows; write it as CREATE OR REPLACE PUMP \"STREAM_PUMP\" AS INSERT INTO \"DESTINATION_SQL_STREAM\" SELECT STREAM …",
            ));
        }
    }
    Ok(())
}

fn check_input(input: &Input, field: &str) -> Result<()> {
    let prefix = &input.name_prefix;
    if prefix.is_empty()
        || prefix.len() > 32
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(ApplicationError::invalid(format!(
            "{field}.NamePrefix '{prefix}' must be 1 to 32 letters, digits and '_'"
        )));
    }
    if input.input_processing_configuration.is_some() {
        return Err(lambda_refused(&format!(
            "{field}.InputProcessingConfiguration"
        )));
    }
    match (&input.kinesis_streams_input, &input.kinesis_firehose_input) {
        (Some(stream), None) => {
            if name_in_arn(&stream.resource_arn, "kinesis", "stream").is_none() {
                return Err(ApplicationError::invalid(format!(
                    "{field}.KinesisStreamsInput.ResourceARN '{}' is not a Kinesis stream ARN (arn:aws:kinesis:region:account:stream/name)",
                    stream.resource_arn
                )));
            }
        }
        (None, Some(_)) => {
            return Err(ApplicationError::new(
                ErrorKind::UnsupportedOperation,
                format!(
                    "{field}.KinesisFirehoseInput is not supported; read the delivery stream's source stream with KinesisStreamsInput"
                ),
            ));
        }
        _ => {
            return Err(ApplicationError::invalid(format!(
                "{field}: give exactly one of KinesisStreamsInput and KinesisFirehoseInput"
            )));
        }
    }
    if let Some(parallelism) = input.input_parallelism
        && !(1..=64).contains(&parallelism.count)
    {
        return Err(ApplicationError::invalid(format!(
            "{field}.InputParallelism.Count {} is not from 1 to 64",
            parallelism.count
        )));
    }
    check_schema(&input.input_schema, field)
}

fn check_schema(schema: &InputSchema, field: &str) -> Result<()> {
    InputMapper::new(schema)
        .map(|_| ())
        .map_err(|e| ApplicationError::invalid(format!("{field}.{e}")))
}

fn check_output(output: &Output, field: &str) -> Result<()> {
    if output.name.is_empty() || output.name.len() > 32 {
        return Err(ApplicationError::invalid(format!(
            "{field}.Name '{}' must be the name of an in-application stream (1 to 32 characters)",
            output.name
        )));
    }
    if output.lambda_output.is_some() {
        return Err(lambda_refused(&format!("{field}.LambdaOutput")));
    }
    match (
        &output.kinesis_streams_output,
        &output.kinesis_firehose_output,
    ) {
        (Some(_), None) | (None, Some(_)) => {}
        _ => {
            return Err(ApplicationError::invalid(format!(
                "{field}: give exactly one of KinesisStreamsOutput and KinesisFirehoseOutput"
            )));
        }
    }
    let format = output
        .destination_schema
        .record_format_type
        .to_ascii_uppercase();
    if format != "JSON" && format != "CSV" {
        return Err(ApplicationError::invalid(format!(
            "{field}.DestinationSchema.RecordFormatType '{}' is not JSON or CSV",
            output.destination_schema.record_format_type
        )));
    }
    Ok(())
}

fn check_reference(source: &ReferenceDataSource, field: &str) -> Result<()> {
    if source.table_name.is_empty() || source.table_name.len() > 32 {
        return Err(ApplicationError::invalid(format!(
            "{field}.TableName '{}' must be 1 to 32 characters",
            source.table_name
        )));
    }
    if source.s3_reference_data_source.file_key.is_empty() {
        return Err(ApplicationError::invalid(format!(
            "{field}.S3ReferenceDataSource.FileKey is empty"
        )));
    }
    InputMapper::new(&source.reference_schema)
        .map(|_| ())
        .map_err(|e| {
            ApplicationError::invalid(format!(
                "{field}.{}",
                e.to_string().replacen("InputSchema", "ReferenceSchema", 1)
            ))
        })
}

fn lambda_refused(field: &str) -> ApplicationError {
    ApplicationError::new(
        ErrorKind::UnsupportedOperation,
        format!(
            "{field}: AWS Lambda functions are not supported by Sluice; transform records in the application's SQL, or before they are put"
        ),
    )
}

fn check_tag_count(count: usize) -> Result<()> {
    if count > MAX_TAGS {
        return Err(ApplicationError::new(
            ErrorKind::TooManyTags,
            format!("An application has at most {MAX_TAGS} tags; this would make {count}"),
        ));
    }
    Ok(())
}

fn tag_list(request: &Value, field: &str) -> Result<BTreeMap<String, String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Tag {
        key: String,
        #[serde(default)]
        value: String,
    }
    let tags: Vec<Tag> = member(request, field)?;
    let mut out = BTreeMap::new();
    for (i, tag) in tags.into_iter().enumerate() {
        if tag.key.is_empty() || tag.key.len() > 128 {
            return Err(ApplicationError::invalid(format!(
                "{field}[{i}].Key must be 1 to 128 characters"
            )));
        }
        if tag.value.len() > 256 {
            return Err(ApplicationError::invalid(format!(
                "{field}[{i}].Value is longer than 256 characters"
            )));
        }
        out.insert(tag.key, tag.value);
    }
    Ok(out)
}

/// The application a tagging request's `ResourceARN` names.
fn resource_application(request: &Value) -> Result<String> {
    let arn = string(request, "ResourceARN")?;
    name_in_arn(&arn, "kinesisanalytics", "application")
        .filter(|_| arn.starts_with("arn:"))
        .map(str::to_string)
        .ok_or_else(|| {
            ApplicationError::invalid(format!(
                "ResourceARN '{arn}' is not an application ARN such as {}",
                application_arn("my-application")
            ))
        })
}

fn application_name(request: &Value) -> Result<String> {
    let name = string(request, "ApplicationName")?;
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ApplicationError::invalid(format!(
            "ApplicationName '{name}' must be 1 to 128 letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(name)
}

fn current_version(request: &Value) -> Result<u64> {
    request
        .get("CurrentApplicationVersionId")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            ApplicationError::invalid(
                "CurrentApplicationVersionId is required: the ApplicationVersionId DescribeApplication gives",
            )
        })
}

fn string(request: &Value, field: &str) -> Result<String> {
    optional_string(request, field)?
        .ok_or_else(|| ApplicationError::invalid(format!("{field} is required")))
}

fn optional_string(request: &Value, field: &str) -> Result<Option<String>> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApplicationError::invalid(format!("{field} is a string"))),
    }
}

fn list<'v>(value: &'v Value, field: &str) -> Result<&'v [Value]> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(ApplicationError::invalid(format!("{field} is a list"))),
    }
}

fn member<T: DeserializeOwned>(request: &Value, field: &str) -> Result<T> {
    optional_member(request, field)?
        .ok_or_else(|| ApplicationError::invalid(format!("{field} is required")))
}

fn optional_member<T: DeserializeOwned>(request: &Value, field: &str) -> Result<Option<T>> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => from_value(value.clone(), field).map(Some),
    }
}

fn from_value<T: DeserializeOwned>(value: Value, field: &str) -> Result<T> {
    serde_json::from_value(value).map_err(|e| {
        ApplicationError::invalid(format!("{field}: {}", e.to_string().replace('`', "")))
    })
}
