//! The HTTP server: axum on a current-thread tokio runtime, on its own
//! thread. Handlers turn requests into [`Request`]s for the control loop and
//! render its replies; they never touch the VM.

use super::routes::{MakeRequest, API_PREFIX, ROUTES};
use super::vm_config;
use crate::vmm::{ApiError, Event, Reply};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use serde_json::json;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;
/// How much of an oversized body is read (and dropped) so the client, still
/// sending, receives the 400 instead of a broken connection; past this the
/// connection is simply closed.
const DRAIN_LIMIT: usize = 16 << 20;

/// Reads the body, keeping at most [`MAX_BODY`] bytes; `Err` holds the
/// message when it is larger or cannot be read.
async fn read_body(mut body: Body) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("cannot read the request body: {e}"))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total <= MAX_BODY {
            kept.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > MAX_BODY {
        return Err(format!("request body is larger than {MAX_BODY} bytes"));
    }
    Ok(kept)
}

struct ApiState {
    events: Sender<Event>,
    host_ram: u64,
}

/// An error response: the status and `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn api_error(e: ApiError) -> Response {
    let status = match e {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::NotCreated(_) => StatusCode::NOT_FOUND,
        ApiError::InvalidState(_) => StatusCode::METHOD_NOT_ALLOWED,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.message())
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::Done => StatusCode::NO_CONTENT.into_response(),
        Reply::Ping { pid } => Json(json!({
            "build_version": concat!("covm ", env!("CARGO_PKG_VERSION")),
            "version": env!("CARGO_PKG_VERSION"),
            "pid": pid,
            "features": [],
        }))
        .into_response(),
        Reply::Info {
            config,
            state,
            memory_actual_size,
            migration,
            platform,
        } => Json(json!({
            "config": vm_config::to_json(&config),
            "state": state.name(),
            "memory_actual_size": memory_actual_size,
            "migration": migration,
            "platform": platform,
        }))
        .into_response(),
        Reply::Counters(counters) => Json(counters).into_response(),
    }
}

async fn handle(state: Arc<ApiState>, make_request: MakeRequest, body: Body) -> Response {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let request = match make_request(&bytes, state.host_ram) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    if state.events.send(Event::Api(request, reply_tx)).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "covm is shutting down");
    }
    match reply_rx.await {
        Ok(Ok(reply)) => render(reply),
        Ok(Err(e)) => api_error(e),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "covm is shutting down"),
    }
}

/// The router for every route in [`ROUTES`].
pub fn router(events: Sender<Event>, host_ram: u64) -> Router {
    let state = Arc::new(ApiState { events, host_ram });
    let mut api = Router::new();
    for (path, method, make_request) in ROUTES {
        let make_request = *make_request;
        let filter = MethodFilter::try_from(method.clone()).expect("routes use plain HTTP methods");
        let route = on(filter, move |State(state): State<Arc<ApiState>>, body: Body| {
            handle(state, make_request, body)
        })
        .fallback(|| async { error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint") });
        api = api.route(path, route);
    }
    Router::new()
        .nest(API_PREFIX, api)
        .fallback(|uri: axum::http::Uri| async move { error(StatusCode::NOT_FOUND, format!("no endpoint {uri}")) })
        .with_state(state)
}

/// A running API server.
pub struct ApiServer {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
    socket_path: Option<std::path::PathBuf>,
}

/// How long covm waits for responses in flight when it exits.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl ApiServer {
    /// Stops accepting requests, lets responses in flight (the reply to
    /// `vmm.shutdown` among them) be written, and joins the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
        while !self.thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::warn!("API connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
        }
        if let Some(path) = self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves the API on `listener` from a new thread; `socket_path`, the
/// socket file covm created, is removed when the server stops.
pub fn spawn(
    listener: UnixListener,
    socket_path: Option<std::path::PathBuf>,
    events: Sender<Event>,
    host_ram: u64,
) -> std::io::Result<ApiServer> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("api".into()).spawn(move || {
        runtime.block_on(async move {
            let served = match tokio::net::UnixListener::from_std(listener) {
                Ok(listener) => {
                    axum::serve(listener, router(events, host_ram))
                        .with_graceful_shutdown(async move {
                            let _ = stopped.await;
                        })
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = served {
                tracing::error!("the API server stopped: {e}");
            }
        })
    })?;
    Ok(ApiServer {
        stop,
        thread,
        socket_path,
    })
}
