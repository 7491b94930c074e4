//! What covm's API puts on the wire, shaped so that Cloud Hypervisor's own
//! client (`ch-remote`, its `api_client` crate) reads it as it reads CH's
//! server (micro_http), while staying plain HTTP/1.1 for every other client.
//!
//! CH's client is strict where most clients are lenient (see
//! `../shared/tools/ch-remote/README.md` and `docs/api.md`):
//! - it parses everything between `HTTP/1.1 ` and the end of the status line
//!   as the status code, so the status line carries no reason phrase
//!   (`HTTP/1.1 200 `, as micro_http writes it; RFC 9112 allows an empty one);
//! - it finds `Content-Length: ` by exact, case-sensitive name, so header
//!   names are written in title case (the HTTP connection's option, see
//!   `server.rs`);
//! - it reads the response 256 bytes at a time and decodes each piece as
//!   UTF-8 on its own, so a multi-byte character split across two reads
//!   would crash it: bodies are pure ASCII (JSON escapes the rest);
//! - it reads an error body as a JSON array of messages, top to root cause.

use axum::body::Body;
use axum::http::header::{ALLOW, CONTENT_TYPE, SERVER};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::Response;
use hyper::ext::ReasonPhrase;
use serde::Serialize;
use std::io;

/// The `Server` header, where micro_http writes `Cloud Hypervisor API`.
pub const SERVER_NAME: &str = concat!("covm API ", env!("CARGO_PKG_VERSION"));

/// A JSON formatter that escapes every non-ASCII character as `\uXXXX`
/// (surrogate pairs above the BMP), so the body is ASCII and still the same
/// JSON value.
struct AsciiFormatter;

impl serde_json::ser::Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut start = 0;
        for (at, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = at + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// `value` as compact, ASCII-only JSON.
pub fn ascii_json(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value
        .serialize(&mut serializer)
        .expect("API bodies are JSON values, which always serialise");
    out
}

/// A response with a JSON body.
pub fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let mut response = Response::new(Body::from(ascii_json(value)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error response as CH's server writes it: the status and a JSON array
/// of messages, the top one first and its causes after it.
pub fn error(status: StatusCode, messages: &[&str]) -> Response {
    json(status, &messages)
}

/// 204 No Content: no body, so neither Content-Type nor Content-Length.
pub fn no_content() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// 405 for a method `path` does not take, with the `Allow` header naming the
/// one it does.
pub fn wrong_method(path: &str, allowed: &Method) -> Response {
    let message = format!("method not allowed on {path}: it takes {allowed}");
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, &[&message]);
    if let Ok(value) = HeaderValue::from_str(allowed.as_str()) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}

/// The last touch on every response: the `Server` header and an empty
/// reason phrase (see the module documentation).
pub fn finish(mut response: Response) -> Response {
    response.extensions_mut().insert(ReasonPhrase::from_static(b""));
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static(SERVER_NAME));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_ascii_is_escaped_and_reads_back_unchanged() {
        let text = "µs → 🔒 ok \" \\ \n";
        let bytes = ascii_json(&serde_json::json!({ "m": text }));
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let back: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back["m"], text);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"m":"\u00b5s \u2192 \ud83d\udd12 ok \" \\ \n"}"#
        );
    }

    #[test]
    fn error_bodies_are_message_lists() {
        let response = error(StatusCode::NOT_FOUND, &["top", "cause"]);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
