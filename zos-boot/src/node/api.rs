//! The HTTP JSON API (axum): deployments, capacity, health. Every error is
//! `{"error": "..."}` with a fitting status.

use super::core::{Node, NodeError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        use super::network::NetError;
        let status = match &e {
            NodeError::Invalid(_) | NodeError::Unreachable(_) => StatusCode::BAD_REQUEST,
            NodeError::Network(NetError::OutOfRange { .. }) => StatusCode::BAD_REQUEST,
            NodeError::Exists(_)
            | NodeError::Overcommit { .. }
            | NodeError::DiskOvercommit { .. }
            | NodeError::Network(_) => StatusCode::CONFLICT,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body too large (at most {MAX_BODY} bytes)")
    } else {
        format!("cannot read the request body: {}", rejection.body_text())
    };
    ApiError { status, message }
}

async fn create(
    State(node): State<Node>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let view = node.create(&body).await?;
    let location = format!("/deployments/{}", view.name);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view),
    )
        .into_response())
}

async fn list(State(node): State<Node>) -> Response {
    Json(json!({ "deployments": node.list() })).into_response()
}

async fn show(State(node): State<Node>, Path(name): Path<String>) -> Result<Response, ApiError> {
    node.view(&name, true)
        .map(|v| Json(v).into_response())
        .ok_or_else(|| NodeError::NotFound(name).into())
}

async fn delete(State(node): State<Node>, Path(name): Path<String>) -> Result<Response, ApiError> {
    node.delete(&name).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

async fn capacity(State(node): State<Node>) -> Response {
    let node2 = node.clone();
    match tokio::task::spawn_blocking(move || node2.capacity()).await {
        Ok(c) => Json(c).into_response(),
        Err(e) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        }
        .into_response(),
    }
}

async fn health(State(node): State<Node>) -> Response {
    Json(json!({ "status": "ok", "node_id": node.node_id(), "deployments": node.len(), "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}

async fn not_found(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    }
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    }
}

/// A request's body must arrive whole within `deadline` (408 otherwise), and hold at
/// most [`MAX_BODY`] bytes (413); the handlers then read it from memory.
async fn body_deadline(State(deadline): State<Duration>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(deadline, http_body_util::BodyExt::collect(limited)).await {
        Err(_) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {deadline:?}"),
        }
        .into_response(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body too large (at most {MAX_BODY} bytes)"),
        }
        .into_response(),
        Ok(Err(e)) => ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("cannot read the request body: {e}"),
        }
        .into_response(),
        Ok(Ok(collected)) => {
            let body = axum::body::Body::from(collected.to_bytes());
            next.run(Request::from_parts(parts, body)).await
        }
    }
}

/// The API routes over `node`; a request's body must arrive within `body_deadline`.
pub fn router(node: Node, body_deadline: Duration) -> Router {
    Router::new()
        .route("/deployments", get(list).post(create))
        .route("/deployments/{name}", get(show).delete(delete))
        .route("/capacity", get(capacity))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            body_deadline,
            self::body_deadline,
        ))
        .with_state(node)
}

async fn require_token(State(token): State<Arc<String>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            let mut resp = ApiError {
                status: StatusCode::UNAUTHORIZED,
                message: "missing or wrong bearer token".into(),
            }
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            resp
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The routes behind a bearer token (for TCP).
pub fn router_with_token(node: Node, token: String, body_deadline: Duration) -> Router {
    router(node, body_deadline).layer(middleware::from_fn_with_state(
        Arc::new(token),
        require_token,
    ))
}
