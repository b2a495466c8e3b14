//! The kinesisanalytics API on the Kinesis port: [`sluice_sql::application::api`] behind the
//! Kinesis endpoint's [`JsonService`] seam, so `aws kinesisanalytics` and boto3 reach the
//! session's applications with the same signatures and error envelopes as Kinesis.

use std::sync::Arc;

use sluice_kinesis::{JsonService, ServiceAnswer, ServiceError};
use sluice_sql::application::Applications;
use sluice_sql::application::api::{TARGET_PREFIX, call};

/// The applications of the server's session, as a JSON 1.1 API.
#[derive(Debug)]
pub struct AnalyticsApi(pub Arc<Applications>);

impl JsonService for AnalyticsApi {
    fn target_prefix(&self) -> &'static str {
        TARGET_PREFIX
    }

    fn call(&self, action: String, request: serde_json::Value) -> ServiceAnswer {
        let applications = Arc::clone(&self.0);
        Box::pin(async move {
            call(&applications, &action, request)
                .await
                .map_err(|e| ServiceError {
                    type_name: e.kind.type_name(),
                    status: e.kind.status(),
                    message: e.message,
                })
        })
    }
}
