//! Failed requests, answered like the API server does: the HTTP status code
//! and a `Status` object that kube-rs turns into `kube::Error::Api`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::resource::Resource;
use super::store::Expired;

#[derive(Debug)]
pub(crate) struct ApiError {
    code: StatusCode,
    /// A `metav1.StatusReason`, e.g. `NotFound`.
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    pub fn object_not_found(resource: Resource, name: &str) -> ApiError {
        let plural = resource.info().plural;
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{plural} {name:?} not found"),
        )
    }

    pub fn path_not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake API server only serves get, list and watch",
        )
    }

    /// A resourceVersion older than the kept history.
    pub fn expired(expired: &Expired) -> ApiError {
        let Expired { requested, oldest } = expired;
        ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// A list continue token whose snapshot is no longer in the history.
    pub fn continue_expired() -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            "Expired",
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        )
    }

    /// A resourceVersion newer than any the server has issued.
    pub fn too_large(requested: u64, current: u64) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {requested}, current: {current}"),
        )
    }

    pub fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the fake API server is unavailable (fault injection)",
        )
    }

    /// The `Status` object, also sent as the object of a watch ERROR event.
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, Json(self.status())).into_response()
    }
}
