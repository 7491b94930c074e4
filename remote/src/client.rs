//! One HTTP/1.1 request to covm's API over its UNIX socket (hyper 1.x on a
//! current-thread tokio runtime).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Prefix of every endpoint (the OpenAPI document's server URL path).
pub const API_PREFIX: &str = "/api/v1";

/// What covm-remote asks the server: a method, an endpoint such as
/// `/vm.info`, and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: Method,
    pub endpoint: &'static str,
    pub body: Option<Vec<u8>>,
}

/// A successful (2xx) answer.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("API socket {0} does not exist (is covm running with --api-socket path={0}?)")]
    SocketMissing(PathBuf),
    #[error("nobody listens on API socket {0} (covm is not running, or has exited)")]
    NotListening(PathBuf),
    #[error("{0} is not a UNIX socket")]
    NotASocket(PathBuf),
    #[error("permission denied on API socket {0}")]
    PermissionDenied(PathBuf),
    #[error("cannot connect to API socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot build the HTTP request for {endpoint}: {source}")]
    Request {
        endpoint: &'static str,
        source: hyper::http::Error,
    },
    #[error("HTTP exchange with {path} failed: {source}")]
    Http { path: PathBuf, source: hyper::Error },
    #[error("server answered {status}: {message}")]
    Server { status: StatusCode, message: String },
}

/// Sends `request` to the API server listening on `socket` and waits for its
/// answer. Non-2xx answers become [`ClientError::Server`] with the messages
/// of the error body (Cloud Hypervisor's form, which covm writes too: a JSON
/// array of messages, top to root cause).
pub fn send(socket: &Path, request: &ApiRequest) -> Result<ApiResponse, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(send_async(socket, request))
}

async fn send_async(socket: &Path, request: &ApiRequest) -> Result<ApiResponse, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_error(socket, e))?;
    let http_error = |source| ClientError::Http {
        path: socket.to_path_buf(),
        source,
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    // The connection future drives the socket; it ends when the exchange does.
    let driver = tokio::spawn(connection);

    let mut builder = hyper::Request::builder()
        .method(request.method.clone())
        .uri(format!("{API_PREFIX}{}", request.endpoint))
        .header(HOST, "localhost")
        .header(ACCEPT, "application/json");
    if request.body.is_some() {
        builder = builder.header(CONTENT_TYPE, "application/json");
    } else if request.method == Method::PUT {
        // Say explicitly that an action without a body has none.
        builder = builder.header(CONTENT_LENGTH, "0");
    }
    let body = Full::new(Bytes::from(request.body.clone().unwrap_or_default()));
    let http_request = builder.body(body).map_err(|source| ClientError::Request {
        endpoint: request.endpoint,
        source,
    })?;

    let response = sender.send_request(http_request).await.map_err(http_error)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(http_error)?.to_bytes();
    driver.abort();

    if status.is_success() {
        Ok(ApiResponse { status, body })
    } else {
        Err(ClientError::Server {
            status,
            message: error_message(&body),
        })
    }
}

/// Turns a failed connect into an error saying whether the socket file is
/// missing, is not a socket, or exists with nobody listening.
fn connect_error(path: &Path, error: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match error.kind() {
        io::ErrorKind::NotFound => ClientError::SocketMissing(path),
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path),
        io::ErrorKind::ConnectionRefused => match std::fs::metadata(&path) {
            Ok(meta) if !meta.file_type().is_socket() => ClientError::NotASocket(path),
            _ => ClientError::NotListening(path),
        },
        _ => ClientError::Connect { path, source: error },
    }
}

/// The one-line message of an error body: its messages (a JSON array of
/// strings, top to root cause) joined with `: `, else the body text itself,
/// else a placeholder.
pub fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Vec<String>>(body)
        .ok()
        .filter(|messages| !messages.is_empty())
        .map(|messages| messages.join(": "));
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "(no error message)".to_owned()
    } else {
        line
    }
}

/// Whether `error` means the server closed the connection before answering
/// (what `vmm.shutdown` may look like when covm exits right away).
pub fn is_closed_before_answer(error: &ClientError) -> bool {
    matches!(error, ClientError::Http { source, .. } if source.is_incomplete_message() || source.is_canceled())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A path named `name` in a scratch directory the returned guard
    /// removes.
    fn temp_path(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("covm-remote-test-")
            .tempdir()
            .expect("temp dir");
        let path = dir.path().join(name);
        (dir, path)
    }

    fn get(endpoint: &'static str) -> ApiRequest {
        ApiRequest {
            method: Method::GET,
            endpoint,
            body: None,
        }
    }

    /// A one-shot fake server: reads one request, answers `response`, and
    /// hands back the raw request it read.
    fn fake_server(path: &Path, response: &'static str) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).expect("bind");
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).expect("read");
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            stream.write_all(response.as_bytes()).expect("write");
            String::from_utf8_lossy(&request).into_owned()
        })
    }

    #[test]
    fn missing_socket_is_named() {
        let (_dir, path) = temp_path("missing.sock");
        let err = send(&path, &get("/vmm.ping")).unwrap_err();
        assert!(matches!(err, ClientError::SocketMissing(_)), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn stale_socket_says_nobody_listens() {
        let (_dir, path) = temp_path("stale.sock");
        drop(UnixListener::bind(&path).expect("bind"));
        let err = send(&path, &get("/vmm.ping")).unwrap_err();
        assert!(matches!(err, ClientError::NotListening(_)), "{err}");
        assert!(err.to_string().contains("nobody listens"));
    }

    #[test]
    fn regular_file_is_not_a_socket() {
        let (_dir, path) = temp_path("plain-file");
        std::fs::write(&path, b"x").expect("write");
        let err = send(&path, &get("/vmm.ping")).unwrap_err();
        assert!(matches!(err, ClientError::NotASocket(_)), "{err}");
    }

    #[test]
    fn success_returns_body_and_sends_origin_form() {
        let (_dir, path) = temp_path("ok.sock");
        let server = fake_server(
            &path,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"version\":\"0.1\"}",
        );
        let response = send(&path, &get("/vmm.ping")).expect("send");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(&response.body[..], b"{\"version\":\"0.1\"}");
        let request = server.join().expect("server");
        assert!(request.starts_with("GET /api/v1/vmm.ping HTTP/1.1\r\n"), "{request}");
        assert!(request.to_lowercase().contains("host: localhost"));
    }

    #[test]
    fn put_with_body_is_sent_whole() {
        let (_dir, path) = temp_path("put.sock");
        let server = fake_server(&path, "HTTP/1.1 204 No Content\r\n\r\n");
        let request = ApiRequest {
            method: Method::PUT,
            endpoint: "/vm.create",
            body: Some(br#"{"payload":{}}"#.to_vec()),
        };
        let response = send(&path, &request).expect("send");
        assert_eq!(response.status, StatusCode::NO_CONTENT);
        let raw = server.join().expect("server");
        assert!(raw.starts_with("PUT /api/v1/vm.create HTTP/1.1\r\n"), "{raw}");
        assert!(raw.to_lowercase().contains("content-type: application/json"));
        assert!(raw.ends_with(r#"{"payload":{}}"#), "{raw}");
    }

    #[test]
    fn bodiless_put_says_content_length_zero() {
        let (_dir, path) = temp_path("empty-put.sock");
        let server = fake_server(&path, "HTTP/1.1 204 No Content\r\n\r\n");
        let request = ApiRequest {
            method: Method::PUT,
            endpoint: "/vm.boot",
            body: None,
        };
        send(&path, &request).expect("send");
        let raw = server.join().expect("server").to_lowercase();
        assert!(raw.starts_with("put /api/v1/vm.boot http/1.1\r\n"), "{raw}");
        assert!(raw.contains("content-length: 0\r\n"), "{raw}");
        assert!(!raw.contains("content-type"), "{raw}");
    }

    #[test]
    fn closed_without_answer_is_recognised() {
        let (_dir, path) = temp_path("closed.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
        });
        let request = ApiRequest {
            method: Method::PUT,
            endpoint: "/vmm.shutdown",
            body: None,
        };
        let err = send(&path, &request).unwrap_err();
        server.join().expect("server");
        assert!(is_closed_before_answer(&err), "{err}");
    }

    #[test]
    fn server_error_carries_status_and_message() {
        let (_dir, path) = temp_path("err.sock");
        let server = fake_server(
            &path,
            "HTTP/1.1 405 \r\nContent-Length: 24\r\n\r\n[\"VM is already paused\"]",
        );
        let err = send(&path, &get("/vm.pause")).unwrap_err();
        server.join().expect("server");
        assert_eq!(
            err.to_string(),
            "server answered 405 Method Not Allowed: VM is already paused"
        );
    }

    #[test]
    fn error_message_fallbacks() {
        assert_eq!(error_message(br#"["bad\nthing"]"#), "bad thing");
        assert_eq!(error_message(br#"["top", "cause"]"#), "top: cause");
        assert_eq!(error_message(b"[]"), "[]");
        assert_eq!(error_message(b"plain text\r\n"), "plain text");
        assert_eq!(error_message(b""), "(no error message)");
        assert_eq!(error_message(br#"{"other":1}"#), r#"{"other":1}"#);
    }
}
