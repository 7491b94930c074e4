//! The HTTP server: axum's router over hyper's HTTP/1.1 connections, on a
//! current-thread tokio runtime of its own thread. Handlers turn requests
//! into [`Request`](crate::control::messages::Request)s for the control loop and render its replies; they never
//! touch the VM. Every response is shaped by [`wire`] for CH's client.

use super::passed_fds::{FdStream, PassedFds};
use super::routes::{MakeRequest, RequestContext, API_PREFIX, ROUTES, UNIMPLEMENTED};
use super::vm_config;
use super::wire;
use crate::control::messages::{ApiError, Event, Reply};
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{on, MethodFilter};
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use std::os::unix::net::UnixListener;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use tower::ServiceExt;

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

/// Reads a body the answer does not need: a client that writes its body
/// after the headers (CH's client does) would otherwise find the connection
/// closed under it and never read the answer.
async fn drain(body: Body) {
    let _ = read_body(body).await;
}

struct ApiState {
    events: Sender<Event>,
    host_ram: u64,
}

fn api_error(e: ApiError) -> Response {
    let status = match e {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::NotCreated(_) => StatusCode::NOT_FOUND,
        ApiError::InvalidState(_) => StatusCode::METHOD_NOT_ALLOWED,
        ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::Conflict(_) => StatusCode::CONFLICT,
    };
    wire::error(status, &[e.message()])
}

/// CH's `device_tree`: each virtio device under its virtio-pci function
/// (`_virtio-pci-<id>`, which holds the BDF), as CH lays it out.
fn device_tree(devices: &[(String, String)]) -> serde_json::Value {
    let mut tree = serde_json::Map::new();
    for (id, bdf) in devices {
        let pci = format!("_virtio-pci-{id}");
        tree.insert(
            pci.clone(),
            json!({"id": pci, "resources": [], "children": [id], "pci_bdf": bdf}),
        );
        tree.insert(
            id.clone(),
            json!({"id": id, "resources": [], "parent": pci, "children": []}),
        );
    }
    serde_json::Value::Object(tree)
}

fn render(reply: Reply) -> Response {
    match reply {
        Reply::Done => wire::no_content(),
        Reply::Ping { pid } => wire::json(
            StatusCode::OK,
            &json!({
                "build_version": concat!("covm ", env!("CARGO_PKG_VERSION")),
                "version": env!("CARGO_PKG_VERSION"),
                "pid": pid,
                "features": [],
            }),
        ),
        Reply::Info {
            config,
            state,
            memory_actual_size,
            migration,
            platform,
            devices,
        } => wire::json(
            StatusCode::OK,
            &json!({
                "config": vm_config::to_json(&config),
                "state": state.name(),
                "memory_actual_size": memory_actual_size,
                "device_tree": device_tree(&devices),
                "migration": migration,
                "platform": platform,
            }),
        ),
        Reply::Counters(counters) => wire::json(StatusCode::OK, &counters),
    }
}

async fn handle(state: Arc<ApiState>, make_request: MakeRequest, request: axum::extract::Request) -> Response {
    // Descriptors passed with this request (read with its bytes, so all
    // are here once the body is).
    let passed = request.extensions().get::<PassedFds>().cloned();
    let bytes = match read_body(request.into_body()).await {
        Ok(bytes) => bytes,
        Err(message) => return wire::error(StatusCode::BAD_REQUEST, &[&message]),
    };
    let mut context = RequestContext {
        host_ram: state.host_ram,
        fds: passed.map(|p| p.take()).unwrap_or_default(),
    };
    let request = match make_request(&bytes, &mut context) {
        Ok(request) => request,
        Err(message) => return wire::error(StatusCode::BAD_REQUEST, &[&message]),
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    if state.events.send(Event::Api(request, reply_tx)).is_err() {
        return wire::error(StatusCode::SERVICE_UNAVAILABLE, &["covm is shutting down"]);
    }
    match reply_rx.await {
        Ok(Ok(reply)) => render(reply),
        Ok(Err(e)) => api_error(e),
        Err(_) => wire::error(StatusCode::SERVICE_UNAVAILABLE, &["covm is shutting down"]),
    }
}

/// The router for every route in [`ROUTES`], with CH's endpoints covm does
/// not implement ([`UNIMPLEMENTED`]) answered 404 by name, as CH answers an
/// endpoint its build lacks.
pub fn router(events: Sender<Event>, host_ram: u64) -> Router {
    let state = Arc::new(ApiState { events, host_ram });
    let mut api = Router::new();
    for (path, method, make_request) in ROUTES {
        let make_request = *make_request;
        let filter = MethodFilter::try_from(method.clone()).expect("routes use plain HTTP methods");
        let allowed = method.clone();
        let route = on(
            filter,
            move |State(state): State<Arc<ApiState>>, request: axum::extract::Request| {
                handle(state, make_request, request)
            },
        )
        .fallback(move |body: Body| async move {
            drain(body).await;
            wire::wrong_method(path, &allowed)
        });
        api = api.route(path, route);
    }
    for (path, reason) in UNIMPLEMENTED {
        let message = format!("{}: covm does not implement this endpoint", &path[1..]);
        api = api.route(
            path,
            axum::routing::any(move |body: Body| async move {
                drain(body).await;
                wire::error(StatusCode::NOT_FOUND, &[&message, reason])
            }),
        );
    }
    Router::new()
        .nest(API_PREFIX, api)
        .fallback(|uri: axum::http::Uri, body: Body| async move {
            drain(body).await;
            wire::error(StatusCode::NOT_FOUND, &[&format!("no endpoint {uri}")])
        })
        .with_state(state)
}

/// A running API server; dropping it stops it (see [`ApiServer::drop`]).
pub struct ApiServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    socket_path: Option<std::path::PathBuf>,
}

/// How long covm waits for responses in flight when it exits.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for ApiServer {
    /// Stops accepting requests, lets responses in flight (the reply to
    /// `vmm.shutdown` among them) be written, joins the thread and removes
    /// the socket file covm created: whichever way covm ends.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + DRAIN_TIMEOUT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("API connections still open after {DRAIN_TIMEOUT:?}; exiting anyway");
            }
        }
        if let Some(path) = self.socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Serves `router` on `listener` until `stopped` fires, then lets the
/// connections finish the responses they are writing. Each connection is
/// HTTP/1.1 with title-case header names (CH's client looks headers up by
/// exact name); [`wire::finish`] shapes every response.
async fn serve(listener: tokio::net::UnixListener, router: Router, stopped: tokio::sync::oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("API socket accept failed: {e}");
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        let router = router.clone();
        let fds = PassedFds::default();
        let stream = FdStream::new(stream, fds.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(fds.clone());
            async move {
                let response = router.oneshot(request).await;
                Ok::<_, std::convert::Infallible>(wire::finish(response.unwrap_or_else(|e| match e {})))
            }
        });
        // half_close: a client that shuts its sending side after the
        // request (`nc -N`, socat) still gets the answer.
        let connection = hyper::server::conn::http1::Builder::new()
            .title_case_headers(true)
            .half_close(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("API connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
            match tokio::net::UnixListener::from_std(listener) {
                Ok(listener) => serve(listener, router(events, host_ram), stopped).await,
                Err(e) => tracing::error!("the API server stopped: {e}"),
            }
        })
    })?;
    Ok(ApiServer {
        stop: Some(stop),
        thread: Some(thread),
        socket_path,
    })
}
