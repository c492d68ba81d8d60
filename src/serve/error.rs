//! Errors of the server: [`ApiError`], what a client gets back (the OpenAI error object
//! with an HTTP status), and [`ServeError`], what stops the server itself.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

/// An error answered to a client as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The OpenAI error `type` (`invalid_request_error`, `rate_limit_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400: the request is wrong.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::bad(message).with_param(param)
    }

    pub fn with_param(mut self, param: &str) -> ApiError {
        self.param = Some(param.to_string());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// 404 for a model this server does not serve.
    pub fn unknown_model(model: &str, served: &[String]) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "the model `{model}` does not exist on this server; use one of: {}",
                served.join(", ")
            ),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 404 for a path that is not an endpoint.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "no endpoint {path}: this server has /v1/models, /v1/completions, \
                 /v1/chat/completions, /health and /metrics"
            ),
        )
        .with_code("unknown_url")
    }

    /// 405 for a method the endpoint does not take.
    pub fn wrong_method(method: &str, path: &str, allowed: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{path} does not take {method} requests; send {allowed}"),
        )
        .with_code("method_not_allowed")
    }

    /// 401: no key or a wrong one.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 413: the body is over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the request body is over the server's limit of {limit} bytes \
                 (--max-body-bytes); send a shorter prompt"
            ),
        )
        .with_code("request_too_large")
    }

    /// 429: the queue is full.
    pub fn queue_full(capacity: usize) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "the server's queue is full ({capacity} requests wait for the engine); \
                 retry after the Retry-After delay"
            ),
        )
        .with_code("rate_limit_exceeded")
    }

    /// 503: the server is shutting down.
    pub fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down and takes no new requests",
        )
        .with_code("shutting_down")
    }

    /// 500: something failed on the server's side.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The `{"error": {...}}` object.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match &e {
            EngineError::PromptTooLong { .. } => {
                ApiError::bad(e.to_string()).with_code("context_length_exceeded")
            }
            EngineError::EmptyPrompt => ApiError::bad(
                "the prompt is empty; send a non-empty `prompt` or `messages` content",
            ),
            EngineError::BadWeights { .. }
            | EngineError::BadTopK(_)
            | EngineError::BadSampling(_)
            | EngineError::BadGate(_)
            | EngineError::BadCombine(_)
            | EngineError::BadRequest(_)
            | EngineError::NoSuchMember { .. } => ApiError::bad(e.to_string()),
            EngineError::KvBudget { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                e.to_string(),
            )
            .with_code("kv_budget_exceeded"),
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; pick another --port or --host")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid server option: {0}")]
    Options(String),
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_shape() {
        let e = ApiError::param("temperature", "temperature must be between 0 and 2");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "temperature");
        assert!(b["error"]["code"].is_null());
        let r = ApiError::queue_full(4).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let too_long = EngineError::PromptTooLong {
            member: "m".into(),
            tokens: 10,
            max: 5,
        };
        let e = ApiError::from(too_long);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
        let e = ApiError::from(EngineError::ContextFull {
            member: "m".into(),
            max: 5,
        });
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
