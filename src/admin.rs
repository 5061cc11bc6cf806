//! The admin HTTP server: health and readiness for the supervisor, metrics for Prometheus, and
//! the `/v1` webhook API that `webhookd webhooks …` talks to.
//!
//! The daemon holds sled's exclusive lock on the store, so this API is the one way to change the
//! registry while it runs. Routing is a match on method and path segments: eight routes do not
//! need a router crate. Everything under `/v1` requires the bearer token, compared in constant
//! time; health, readiness and metrics stay open so probes need no secret.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Secret;
use crate::delivery::sign::generate_secret;
use crate::metrics::Metrics;
use crate::service::Readiness;
use crate::store::{NewWebhook, Store, StoreError, WebhookPatch};

/// Request bodies above this are refused: a webhook definition is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub struct AdminState {
    pub store: Store,
    pub token: Option<Secret>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

/// Serves until `shutdown`; connections already open finish their current request.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, request).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

async fn route(state: &AdminState, request: Request<Incoming>) -> Reply {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok\n"),
        (&Method::GET, ["readyz"]) => {
            if state.readiness.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: not consuming from the broker\n",
                )
            }
        }
        (&Method::GET, ["metrics"]) => {
            let mut reply = text(StatusCode::OK, &state.metrics.render());
            reply.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            reply
        }
        (_, ["v1", ..]) => {
            if let Some(refusal) = refuse_unauthorized(state, &request) {
                return refusal;
            }
            let query = request.uri().query().unwrap_or("").to_owned();
            match api(state, &method, &segments[1..], &query, request).await {
                Ok(reply) => reply,
                Err(error) => error.into_reply(),
            }
        }
        _ => json_error(StatusCode::NOT_FOUND, "no such route", None),
    }
}

/// The 401 for a request without the right bearer token; `None` lets it through.
fn refuse_unauthorized(state: &AdminState, request: &Request<Incoming>) -> Option<Reply> {
    let Some(token) = &state.token else {
        return Some(json_error(
            StatusCode::UNAUTHORIZED,
            "the admin API is disabled: set admin.token (or admin.token_file)",
            None,
        ));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        None
    } else {
        Some(json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            None,
        ))
    }
}

/// Why an API request failed, as the client should see it.
enum ApiError {
    BadRequest(String, Option<&'static str>),
    NotFound,
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Invalid { field, message } => ApiError::BadRequest(message, Some(field)),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ApiError {
    fn into_reply(self) -> Reply {
        match self {
            ApiError::BadRequest(message, field) => {
                json_error(StatusCode::BAD_REQUEST, &message, field)
            }
            ApiError::NotFound => json_error(StatusCode::NOT_FOUND, "no such webhook", None),
            ApiError::Internal(message) => {
                warn!(%message, "admin API request failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, &message, None)
            }
        }
    }
}

async fn api(
    state: &AdminState,
    method: &Method,
    segments: &[&str],
    query: &str,
    request: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let store = &state.store;
    match (method, segments) {
        (&Method::GET, ["webhooks"]) => {
            let account = match query_param(query, "account_id") {
                Some(value) => Some(value.parse::<u64>().map_err(|_| {
                    ApiError::BadRequest(
                        format!("account_id must be a positive integer, got {value:?}"),
                        Some("account_id"),
                    )
                })?),
                None => None,
            };
            let list: Vec<_> = store.list(account)?.iter().map(|w| w.masked()).collect();
            Ok(json(StatusCode::OK, &list))
        }
        (&Method::POST, ["webhooks"]) => {
            let (mut fields, generate) = read_json(request).await?;
            if generate {
                fields.insert("secret".into(), Value::String(generate_secret()));
            }
            let new: NewWebhook = serde_json::from_value(Value::Object(fields))
                .map_err(|e| ApiError::BadRequest(e.to_string(), None))?;
            let webhook = store.create(new).await?;
            Ok(json(StatusCode::CREATED, &webhook))
        }
        (&Method::GET, ["webhooks", id]) => match store.get(id)? {
            Some(webhook) => Ok(json(StatusCode::OK, &webhook.masked())),
            None => Err(ApiError::NotFound),
        },
        (&Method::PATCH, ["webhooks", id]) => {
            let (mut fields, generate) = read_json(request).await?;
            if generate {
                fields.insert("secret".into(), Value::String(generate_secret()));
            }
            let secret_changed = fields.contains_key("secret");
            let patch: WebhookPatch = serde_json::from_value(Value::Object(fields))
                .map_err(|e| ApiError::BadRequest(e.to_string(), None))?;
            match store.update(id, patch).await? {
                // A new secret is shown once, in the reply that set it.
                Some(webhook) if secret_changed => Ok(json(StatusCode::OK, &webhook)),
                Some(webhook) => Ok(json(StatusCode::OK, &webhook.masked())),
                None => Err(ApiError::NotFound),
            }
        }
        (&Method::DELETE, ["webhooks", id]) => {
            if store.delete(id).await? {
                Ok(empty(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::NotFound)
            }
        }
        (&Method::GET, ["webhooks", id, "attempts"]) => {
            if store.get(id)?.is_none() {
                return Err(ApiError::NotFound);
            }
            let limit = query_param(query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            Ok(json(StatusCode::OK, &store.attempts(id, limit)?))
        }
        _ => Ok(json_error(StatusCode::NOT_FOUND, "no such route", None)),
    }
}

/// Reads a JSON object body (capped), returning its fields and whether it asked for a generated
/// secret (`"generate_secret": true`, which is not a field of the webhook itself).
async fn read_json(
    request: Request<Incoming>,
) -> Result<(serde_json::Map<String, Value>, bool), ApiError> {
    let bytes = Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            ApiError::BadRequest(
                format!("request body unreadable or over {MAX_REQUEST_BYTES} bytes: {e}"),
                None,
            )
        })?
        .to_bytes();
    let mut fields = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => {
            return Err(ApiError::BadRequest(
                "body must be a JSON object".into(),
                None,
            ))
        }
        Err(e) => return Err(ApiError::BadRequest(format!("body is not JSON: {e}"), None)),
    };
    let generate = match fields.remove("generate_secret") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "generate_secret must be true or false".into(),
                Some("generate_secret"),
            ))
        }
    };
    Ok((fields, generate))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(body) => with_body(status, "application/json", body.into()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string(), None),
    }
}

fn json_error(status: StatusCode, message: &str, field: Option<&str>) -> Reply {
    let body = serde_json::json!({ "error": message, "field": field });
    with_body(status, "application/json", body.to_string().into())
}

fn text(status: StatusCode, body: &str) -> Reply {
    with_body(
        status,
        "text/plain; charset=utf-8",
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn empty(status: StatusCode) -> Reply {
    with_body(status, "text/plain", Bytes::new())
}

fn with_body(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found_by_exact_name() {
        assert_eq!(query_param("account_id=7&limit=3", "limit"), Some("3"));
        assert_eq!(query_param("xaccount_id=7", "account_id"), None);
        assert_eq!(query_param("", "account_id"), None);
    }
}
