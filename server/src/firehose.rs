//! The Firehose API and the Glue catalog on the Kinesis port: [`sluice_sql::firehose`] behind
//! the Kinesis endpoint's [`JsonService`] seam, so `aws firehose`, `aws glue` and boto3 reach
//! the session's delivery streams with the same signatures and error envelopes as Kinesis.

use std::sync::Arc;

use sluice_kinesis::{JsonService, ServiceAnswer, ServiceError};
use sluice_sql::firehose::{Firehose, FirehoseError, api, glue};

fn service_error(e: FirehoseError) -> ServiceError {
    ServiceError {
        type_name: e.type_name,
        status: e.status(),
        message: e.message,
    }
}

/// `Firehose_20150804.<Action>`.
#[derive(Debug)]
pub struct FirehoseApi(pub Arc<Firehose>);

impl JsonService for FirehoseApi {
    fn target_prefix(&self) -> &'static str {
        api::TARGET_PREFIX
    }

    fn call(&self, action: String, request: serde_json::Value) -> ServiceAnswer {
        let firehose = Arc::clone(&self.0);
        Box::pin(async move { firehose.call(&action, request).await.map_err(service_error) })
    }
}

/// `AWSGlue.<Action>`: the catalog whose tables give record format conversion its columns.
#[derive(Debug)]
pub struct GlueApi(pub Arc<Firehose>);

impl JsonService for GlueApi {
    fn target_prefix(&self) -> &'static str {
        glue::TARGET_PREFIX
    }

    fn call(&self, action: String, request: serde_json::Value) -> ServiceAnswer {
        let firehose = Arc::clone(&self.0);
        Box::pin(async move {
            firehose
                .glue()
                .call(&action, &request)
                .map_err(service_error)
        })
    }
}
