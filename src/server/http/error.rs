//! The REST API's one error type: every failure answers `{"error": code, "message": ...}`
//! with its status. Internal causes stay on the server: the response carries the error
//! in its extensions, and [`log_internal`] logs it once, with its chain of causes.

use crate::server::error::{Classify, Refusal};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;
use std::sync::Arc;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// Every API failure.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(&'static str),
    /// The token has none of these scopes, any one of which would do.
    ForbiddenAny(&'static [&'static str]),
    BadRequest(&'static str, String),
    NotFound(String),
    Conflict(String),
    TooManyRequests(String),
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// 503: something this request needs is unavailable for now; the message says what.
    Unavailable(String),
    /// 500: a fault of ours; the cause is logged, never sent.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

/// The cause of a 500, kept in the response's extensions for [`log_internal`].
#[derive(Debug, Clone)]
pub struct InternalCause(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for InternalCause {
    /// The error and each of its sources, `a: b: c`, leaving out a source whose text the
    /// line already holds (wrappers that print their cause would repeat it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(e) = source {
            let text = e.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = e.source();
        }
        f.write_str(&line)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(code, m) => ApiError::BadRequest(code, m),
            Refusal::Unauthorized(_) => ApiError::Unauthorized,
            Refusal::NotFound(m) => ApiError::NotFound(m),
            Refusal::Conflict(m) => ApiError::Conflict(m),
            Refusal::Throttled(m) => ApiError::TooManyRequests(m),
            Refusal::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl<E: Classify> From<E> for ApiError {
    fn from(e: E) -> Self {
        match e.answer("API") {
            Some(r) => r.into(),
            None => ApiError::Internal(Box::new(e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut cause = None;
        let (status, code, message) = match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API token is required (Authorization: Bearer ...)".to_string(),
            ),
            ApiError::Forbidden(scope) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this token lacks the '{scope}' scope"),
            ),
            ApiError::ForbiddenAny(scopes) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this token needs one of the scopes {}",
                    scopes
                        .iter()
                        .map(|s| format!("'{s}'"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            ),
            ApiError::BadRequest(code, m) => (StatusCode::BAD_REQUEST, code, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method".to_string(),
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request bodies are limited to {MAX_BODY} bytes"),
            ),
            ApiError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json".to_string(),
            ),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            ApiError::Internal(e) => {
                cause = Some(InternalCause(Arc::from(e)));
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log".to_string(),
                )
            }
        };
        let mut response =
            (status, Json(json!({ "error": code, "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(cause) = cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// Logs the cause of every internal error the API answered, once, with the request line.
/// Causes of 503s (an outage) are logged where they are classified, as warnings.
pub async fn log_internal(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = next.run(req).await;
    if let Some(cause) = response.extensions().get::<InternalCause>() {
        tracing::error!(%method, %path, error = %cause, "API request failed");
    }
    response
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such API endpoint".into())
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// JSON body extraction whose failures come back as [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::BytesRejection(r))
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::PayloadTooLarge)
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(ApiError::BadRequest("malformed_json", e.body_text()))
            }
            Err(JsonRejection::JsonDataError(e)) => {
                Err(ApiError::BadRequest("invalid_body", e.body_text()))
            }
            Err(e) => Err(ApiError::BadRequest("invalid_body", e.body_text())),
        }
    }
}

/// An optional body: a request without a body (and without a JSON content type) gives
/// `None`; anything else must be valid JSON.
impl<S, T> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let has_type = req.headers().contains_key(header::CONTENT_TYPE);
        let no_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
        let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
        if !has_type && no_length && !chunked {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}
