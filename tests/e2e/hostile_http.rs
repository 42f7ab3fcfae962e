//! Hostile HTTP against a real stack, much of it over raw TCP: bad path parameters, declared
//! sizes the gateway must refuse before reading, clients that dribble their headers or body,
//! and a generated corpus of malformed requests. Every answer is a 4xx in the OpenAI error
//! shape (or one of the documented exceptions below), never a 5xx, never a hang.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::Stack;

/// Longest a single exchange may take before the test calls it a hang. Generous: a slow
/// machine must not fail the test, a hang must.
const HANG: Duration = Duration::from_secs(15);

/// What came back on a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The OpenAI error shape: `error` with `message`, `type`, `code` and a `param` key.
    fn is_openai_error(&self) -> bool {
        self.json().is_some_and(|v| {
            let e = &v["error"];
            e["message"].as_str().is_some_and(|m| !m.is_empty())
                && e["type"].is_string()
                && e["code"].is_string()
                && e.as_object().is_some_and(|o| o.contains_key("param"))
        })
    }
}

fn addr(stack: &Stack) -> String {
    stack.base.trim_start_matches("http://").to_owned()
}

/// Writes `request` on a new connection, then reads until the server closes it (requests
/// say `connection: close`; refused ones are closed anyway). `None` if nothing parseable
/// came back; panics on a hang.
async fn exchange(addr: &str, request: &[u8]) -> Option<Raw> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before everything is written (a refused size).
    let _ = tcp.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buf = [0u8; 8192];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within {HANG:?} to {:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    parse(&out)
}

fn parse(bytes: &[u8]) -> Option<Raw> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = bytes[end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Some(Raw { status, head, body })
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&bytes[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&bytes[start..(start + size).min(bytes.len())]);
        bytes = &bytes[(start + size + 2).min(bytes.len())..];
    }
    out
}

/// A request with `head_lines` (each without CRLF) and `body`; adds `host` and
/// `connection: close`, and `content-length` unless a line sets it or `transfer-encoding`.
fn request(method: &str, path: &[u8], head_lines: &[Vec<u8>], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: gateway\r\nconnection: close\r\n");
    let sets_length = head_lines.iter().any(|l| {
        let l = String::from_utf8_lossy(l).to_ascii_lowercase();
        l.starts_with("content-length") || l.starts_with("transfer-encoding")
    });
    for line in head_lines {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if !sets_length && (method == "POST" || !body.is_empty()) {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn json_post(path: &str, body: &[u8], extra: &[Vec<u8>]) -> Vec<u8> {
    let mut lines = vec![b"content-type: application/json".to_vec()];
    lines.extend_from_slice(extra);
    request("POST", path.as_bytes(), &lines, body)
}

async fn hostile_stack() -> Stack {
    Stack::start(
        1,
        &[
            ("SWITCHYARD__GATEWAY__MAX_BODY_BYTES", "65536"),
            ("SWITCHYARD__GATEWAY__HEADER_READ_TIMEOUT_MS", "1000"),
            ("SWITCHYARD__GATEWAY__BODY_READ_TIMEOUT_MS", "1000"),
        ],
    )
    .await
}

#[tokio::test]
async fn bad_path_parameters_get_openai_errors() {
    let stack = hostile_stack().await;
    let addr = addr(&stack);
    for (method, path) in [
        ("GET", "/v1/tasks/%ff"),
        ("GET", "/v1/tasks/%c3%28"),
        ("POST", "/v1/dlq/%ff/replay"),
        ("GET", "/v1/models/%ff"),
        ("GET", "/v1/models/simulated%2F%ff"),
        ("GET", "/v1/tasks/%00"),
    ] {
        let r = exchange(&addr, &request(method, path.as_bytes(), &[], b""))
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{method} {path}: {}", r.head);
        assert!(
            r.is_openai_error(),
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.head.to_ascii_lowercase().contains("application/json"));
    }
    stack.stop().await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let stack = hostile_stack().await;
    let addr = addr(&stack);
    // Declares a terabyte, sends a few bytes and waits: the answer must not wait for more.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
          content-length: 1000000000000\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(HANG, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if let Some(r) = parse(&out)
                        && r.json().is_some()
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(answered.is_ok(), "the gateway waited for the declared body");
    let r = parse(&out).expect("an HTTP answer");
    assert_eq!(r.status, 413, "{}", r.head);
    assert!(
        r.is_openai_error(),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json().unwrap()["error"]["code"], "request_too_large");
    stack.stop().await;
}

/// Reads until the server closes the connection; `true` if it did (EOF or reset) before the
/// test's hang limit.
async fn closed_by_server(tcp: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(HANG, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (closed, out)
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_disconnected() {
    let stack = hostile_stack().await;
    let addr = addr(&stack);
    // Half a request line, then nothing.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"POST /v1/chat/compl").await.unwrap();
    assert!(closed_by_server(&mut tcp).await.0, "still open");
    // Nothing at all.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_by_server(&mut tcp).await.0, "still open");
    // The gateway still serves.
    let r = stack
        .http
        .get(format!("{}/readyz", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn a_client_dribbling_its_body_gets_408_and_is_disconnected() {
    let stack = hostile_stack().await;
    let addr = addr(&stack);
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let (closed, out) = closed_by_server(&mut tcp).await;
    assert!(closed, "still open");
    let r = parse(&out).expect("an HTTP answer");
    assert_eq!(r.status, 408, "{}", r.head);
    assert!(
        r.is_openai_error(),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    stack.stop().await;
}
