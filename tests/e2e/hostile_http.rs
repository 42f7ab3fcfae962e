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

fn parse(mut bytes: &[u8]) -> Option<Raw> {
    let (head, status, end) = loop {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
        // `100 Continue` comes before the answer.
        if (100..200).contains(&status) {
            bytes = &bytes[end + 4..];
            continue;
        }
        break (head, status, end);
    };
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

/// What a corpus case may be answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A 4xx in the OpenAI error shape.
    Refused,
    /// Valid enough to run: fields the gateway does not check go to the provider as sent
    /// (documented in `docs/configuration.md`, Limits), so a 2xx, or a 4xx in the OpenAI
    /// shape if the provider refuses.
    PassThrough,
    /// Not HTTP that hyper can parse (bad request line, header bytes, lengths, sizes):
    /// hyper answers itself with a bodyless 400/413/414/431, or closes, before any of our
    /// code runs. Documented as the one exception to the error shape.
    Protocol,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    expect: Expect,
}

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str =
    r#"{"model":"simulated","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#;

fn case(name: impl Into<String>, bytes: Vec<u8>, expect: Expect) -> Case {
    Case {
        name: name.into(),
        bytes,
        expect,
    }
}

/// A good chat body with `pointer` (`/model`, `/messages/0/role`, …) set to `value`.
fn body_with(pointer: &str, value: &Value) -> Vec<u8> {
    let mut body: Value = serde_json::from_str(GOOD).unwrap();
    match body.pointer_mut(pointer) {
        Some(slot) => *slot = value.clone(),
        None => {
            let key = pointer.trim_start_matches('/');
            body[key] = value.clone();
        }
    }
    body.to_string().into_bytes()
}

fn corpus_bodies(cases: &mut Vec<Case>) {
    use Expect::{PassThrough, Refused};
    // Truncated JSON: every third prefix of a good body.
    for cut in (0..GOOD.len()).step_by(3) {
        let body = &GOOD.as_bytes()[..cut];
        cases.push(case(
            format!("truncated at {cut}"),
            json_post(CHAT, body, &[]),
            Refused,
        ));
    }
    // Not JSON, or not a JSON object.
    for bad in [
        "nul",
        "{",
        "}",
        "[",
        "[]",
        "\"text\"",
        "42",
        "{'model':'simulated'}",
        r#"{"model":"simulated",}"#,
        "{}x",
        "NaN",
        r#"{"a":1e400}"#,
        "\u{feff}{}",
        r#"{"model":"simulated","messages":[{"role":"user","content":"hi"}]"#,
    ] {
        cases.push(case(
            format!("bad json {bad:?}"),
            json_post(CHAT, bad.as_bytes(), &[]),
            Refused,
        ));
    }
    // Invalid UTF-8 and raw NUL, in a value, in a key and in the model.
    for seq in [
        &b"\xff"[..],
        b"\xc3\x28",
        b"\xed\xa0\x80",
        b"\xf8\x88\x80\x80\x80",
        b"\xc0\xaf",
        b"\x00",
    ] {
        for (at, marker) in [
            ("content", "\"hi\""),
            ("key", "\"role\""),
            ("model", "\"simulated\""),
        ] {
            let pos = GOOD.find(marker).unwrap() + 2;
            let mut body = GOOD.as_bytes().to_vec();
            body.splice(pos..pos, seq.iter().copied());
            cases.push(case(
                format!("bytes {seq:?} in {at}"),
                json_post(CHAT, &body, &[]),
                Refused,
            ));
        }
    }
    // Escaped NUL and line breaks: valid JSON. In the model they cannot travel; in content
    // and role they are the provider's business.
    for (pointer, value, expect) in [
        ("/model", "simu\u{0}lated", Refused),
        ("/model", "simulated/a\nb", Refused),
        ("/model", "simulated/a\r\nX-Injected: 1", Refused),
        ("/messages/0/content", "h\u{0}i", PassThrough),
        ("/messages/0/role", "us\u{0}er", PassThrough),
        ("/messages/0/content", "line\r\nbreak", PassThrough),
    ] {
        cases.push(case(
            format!("escaped control character in {pointer}"),
            json_post(CHAT, &body_with(pointer, &json!(value)), &[]),
            expect,
        ));
    }
    // Deep nesting, in an unknown field and in the content, around the limits.
    for levels in [101, 126, 127, 128, 1000, 30_000] {
        for field in ["x", "content"] {
            let nested = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
            let body = match field {
                "x" => GOOD.replacen('}', &format!(r#"}},"x":{nested}"#), 1),
                _ => GOOD.replace(r#""hi""#, &nested),
            };
            cases.push(case(
                format!("{levels} levels in {field}"),
                json_post(CHAT, body.as_bytes(), &[]),
                Refused,
            ));
        }
    }
    // Sizes.
    let big = body_with("/messages/0/content", &json!("x".repeat(70_000)));
    cases.push(case(
        "body over the limit",
        json_post(CHAT, &big, &[]),
        Refused,
    ));
    let long_model = body_with("/model", &json!(format!("simulated/{}", "m".repeat(300))));
    cases.push(case(
        "model over 256 bytes",
        json_post(CHAT, &long_model, &[]),
        Refused,
    ));
    // hyper itself refuses a length it cannot represent (u64::MAX), with a bodyless 4xx.
    let huge = b"content-length: 18446744073709551615".to_vec();
    cases.push(case(
        "declared u64::MAX",
        json_post(CHAT, GOOD.as_bytes(), &[huge]),
        Expect::Protocol,
    ));
    for declared in ["65537", "1000000000000", "1000000000000000000"] {
        let line = format!("content-length: {declared}").into_bytes();
        cases.push(case(
            format!("declared {declared}"),
            json_post(CHAT, GOOD.as_bytes(), &[line]),
            Refused,
        ));
    }
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    cases.push(case(
        "chunked body over the limit",
        json_post(CHAT, &chunked, &[b"transfer-encoding: chunked".to_vec()]),
        Refused,
    ));
    let many: Vec<Value> = (0..1000)
        .map(|_| json!({"role": "user", "content": "hi"}))
        .collect();
    cases.push(case(
        "a thousand messages",
        json_post(CHAT, &body_with("/messages", &json!(many)), &[]),
        PassThrough,
    ));

    // Wrong types for every field the gateway checks…
    let wrong = [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(true),
        json!(null),
        json!([]),
        json!({}),
        json!(""),
    ];
    for pointer in ["/model", "/messages", "/messages/0", "/messages/0/role"] {
        for value in &wrong {
            // An empty role is a string: the provider's to judge.
            let expect = if pointer.ends_with("role") && value == "" {
                PassThrough
            } else {
                Refused
            };
            cases.push(case(
                format!("{pointer} = {value}"),
                json_post(CHAT, &body_with(pointer, value), &[]),
                expect,
            ));
        }
    }
    for value in [json!(0), json!(1.5), json!(true), json!({})] {
        cases.push(case(
            format!("content = {value}"),
            json_post(CHAT, &body_with("/messages/0/content", &value), &[]),
            Refused,
        ));
    }
    for value in [json!(0), json!("true"), json!([]), json!({}), json!(1.5)] {
        cases.push(case(
            format!("stream = {value}"),
            json_post(CHAT, &body_with("/stream", &value), &[]),
            Refused,
        ));
    }
    for value in [json!(["hi"]), json!([1]), json!([null]), json!([[]])] {
        cases.push(case(
            format!("messages = {value}"),
            json_post(CHAT, &body_with("/messages", &value), &[]),
            Refused,
        ));
    }
    // …and for the fields it passes to the provider untouched.
    for field in [
        "temperature",
        "top_p",
        "max_tokens",
        "n",
        "stop",
        "tools",
        "tool_choice",
        "response_format",
        "stream_options",
        "user",
        "seed",
        "presence_penalty",
    ] {
        for value in [
            json!("x"),
            json!(-1),
            json!(true),
            json!([]),
            json!({}),
            json!(null),
        ] {
            cases.push(case(
                format!("{field} = {value}"),
                json_post(CHAT, &body_with(&format!("/{field}"), &value), &[]),
                PassThrough,
            ));
        }
    }
}

fn corpus_headers(cases: &mut Vec<Case>) {
    use Expect::{PassThrough, Protocol, Refused};
    let header = |name: &str, value: &[u8]| {
        let mut line = format!("{name}: ").into_bytes();
        line.extend_from_slice(value);
        line
    };
    let refused: &[(&str, &[&[u8]])] = &[
        (
            "x-switchyard-timeout-ms",
            &[
                b"",
                b"abc",
                b"-1",
                b"0",
                b"1",
                b"999",
                b"600001",
                b"99999999999999999999",
                b"1e3",
                b"0x10",
                b"1000.5",
                b"\xc3\xa9",
            ],
        ),
        (
            "x-switchyard-priority",
            &[b"", b"urgent", b"HIGH", b"1", b"\xc3\xa9"],
        ),
        (
            "x-switchyard-capability",
            &[
                b"",
                b"Chat",
                b"chat.>",
                b"*",
                b"a b",
                b"unknown",
                b"\xc3\xa9",
            ],
        ),
        ("idempotency-key", &[b"", b"\xff\xfe"]),
        (
            "x-switchyard-task-id",
            &[
                b"",
                b"nope",
                b"01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a0",
                b"\xff",
            ],
        ),
    ];
    for (name, values) in refused {
        for value in *values {
            cases.push(case(
                format!("{name}: {:?}", String::from_utf8_lossy(value)),
                json_post(CHAT, GOOD.as_bytes(), &[header(name, value)]),
                Refused,
            ));
        }
    }
    let long_key = "k".repeat(256);
    let long_capability = "a".repeat(60_000);
    for (name, value) in [
        ("idempotency-key", long_key.as_str()),
        ("x-switchyard-capability", long_capability.as_str()),
    ] {
        cases.push(case(
            format!("long {name}"),
            json_post(CHAT, GOOD.as_bytes(), &[header(name, value.as_bytes())]),
            Refused,
        ));
    }
    cases.push(case(
        "idempotency key and task id",
        json_post(
            CHAT,
            GOOD.as_bytes(),
            &[
                header("idempotency-key", b"k"),
                header(
                    "x-switchyard-task-id",
                    b"01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01",
                ),
            ],
        ),
        Refused,
    ));
    // What hyper refuses before our code sees the request.
    let huge = "h".repeat(1 << 20);
    let many: Vec<Vec<u8>> = (0..200).map(|i| header(&format!("x-h{i}"), b"1")).collect();
    let protocol: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("a 1 MiB header", vec![header("x-big", huge.as_bytes())]),
        ("200 headers", many),
        (
            "control byte in a header value",
            vec![header("x-switchyard-priority", b"hi\x01gh")],
        ),
        ("NUL in a header value", vec![header("x-a", b"a\x00b")]),
        ("header without a colon", vec![b"garbage".to_vec()]),
        ("header name with a space", vec![b"x bad: 1".to_vec()]),
        (
            "two different content-lengths",
            vec![b"content-length: 5".to_vec(), b"content-length: 6".to_vec()],
        ),
        (
            "content-length not a number",
            vec![b"content-length: abc".to_vec()],
        ),
        (
            "negative content-length",
            vec![b"content-length: -1".to_vec()],
        ),
        (
            "unknown transfer-encoding",
            vec![b"transfer-encoding: gzip".to_vec()],
        ),
        (
            "content-length and chunked",
            vec![
                b"content-length: 5".to_vec(),
                b"transfer-encoding: chunked".to_vec(),
            ],
        ),
    ];
    for (name, lines) in protocol {
        cases.push(case(
            name,
            json_post(CHAT, GOOD.as_bytes(), &lines),
            Protocol,
        ));
    }
    // The body is read as JSON whatever its Content-Type says (`curl -d` sends form
    // encoding), so these run.
    for content_type in [
        &b"text/plain"[..],
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/json; charset=utf-16",
        b"\xff\xfe",
        b"",
    ] {
        cases.push(case(
            format!("content-type {:?}", String::from_utf8_lossy(content_type)),
            request(
                "POST",
                CHAT.as_bytes(),
                &[header("content-type", content_type)],
                GOOD.as_bytes(),
            ),
            PassThrough,
        ));
    }
    cases.push(case(
        "no content-type",
        request("POST", CHAT.as_bytes(), &[], GOOD.as_bytes()),
        PassThrough,
    ));
    cases.push(case(
        "expect: 100-continue",
        json_post(CHAT, GOOD.as_bytes(), &[b"expect: 100-continue".to_vec()]),
        PassThrough,
    ));
}

fn corpus_paths(cases: &mut Vec<Case>) {
    use Expect::{Protocol, Refused};
    let long_task = format!("/v1/tasks/{}", "a".repeat(10_000));
    let long_model = format!("/v1/models/{}", "m".repeat(9_000));
    let long_any = format!("/{}", "p".repeat(10_000));
    let refused: Vec<(&str, &str)> = vec![
        ("GET", "/v1/tasks/%ff"),
        ("GET", "/v1/tasks/%c3%28"),
        ("GET", "/v1/tasks/%00"),
        ("GET", "/v1/tasks/%C3%A9"),
        ("GET", "/v1/tasks/.."),
        ("GET", "/v1/tasks/../../etc/passwd"),
        ("GET", "/v1/tasks/%2e%2e"),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd"),
        ("GET", "/v1/../v1/models"),
        ("GET", "//v1//models"),
        ("GET", "/v1/chat/completions/"),
        ("GET", long_task.as_str()),
        ("GET", long_model.as_str()),
        ("GET", long_any.as_str()),
        ("GET", "/v1/models/%ff"),
        ("GET", "/v1/models/simulated%2F%ff"),
        ("GET", "/v1/models/nope%0Anope"),
        ("POST", "/v1/dlq/%ff/replay"),
        ("POST", "/v1/dlq/..%2F..%2Fx/replay"),
        (
            "POST",
            "/v1/dlq/01935c5e-7b7a-7cc0-9f43-6f7c1a9e1a01/replay",
        ),
        ("GET", "/v1/dlq?limit=abc"),
        ("GET", "/v1/dlq?limit=-1"),
        ("GET", "/v1/dlq?capability=a.b"),
        ("GET", "/v1/dlq?capability=%ff"),
        ("GET", "/v1/dlq?unknown=1"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/chat/completions"),
        ("PUT", "/v1/tasks/x"),
        ("FOO", "/v1/models"),
        ("OPTIONS", "*"),
    ];
    for (method, path) in refused {
        let shown: String = path.chars().take(60).collect();
        cases.push(case(
            format!("{method} {shown}"),
            request(method, path.as_bytes(), &[], b""),
            Refused,
        ));
    }
    let too_long = format!("/v1/tasks/{}", "a".repeat(70_000));
    for (name, bytes) in [
        (
            "raw non-ASCII in the path",
            request("GET", "/v1/tasks/é".as_bytes(), &[], b""),
        ),
        (
            "path over 64 KiB",
            request("GET", too_long.as_bytes(), &[], b""),
        ),
        (
            "space in the path",
            request("GET", b"/v1/tasks/a b", &[], b""),
        ),
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec()),
        (
            "unknown HTTP version",
            b"GET / HTTP/9.9\r\nhost: g\r\n\r\n".to_vec(),
        ),
        ("binary", b"\x00\x01\x02\x03\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
    ] {
        cases.push(case(name, bytes, Protocol));
    }
}

/// Checks one answer against what its case allows.
fn judge(case: &Case, answer: Option<&Raw>) -> Result<(), String> {
    let shown = |r: &Raw| {
        format!(
            "{} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        )
    };
    match (case.expect, answer) {
        (Expect::Protocol, None) => Ok(()),
        (_, None) => Err("no HTTP answer".to_owned()),
        (_, Some(r)) if r.status >= 500 => Err(format!("a 5xx: {}", shown(r))),
        (Expect::Refused, Some(r)) if (400..500).contains(&r.status) && r.is_openai_error() => {
            Ok(())
        }
        (Expect::PassThrough, Some(r)) if (200..300).contains(&r.status) => Ok(()),
        (Expect::PassThrough, Some(r)) if (400..500).contains(&r.status) && r.is_openai_error() => {
            Ok(())
        }
        (Expect::Protocol, Some(r)) if (400..500).contains(&r.status) => Ok(()),
        (_, Some(r)) => Err(format!("unexpected: {}", shown(r))),
    }
}

#[tokio::test]
async fn a_corpus_of_malformed_requests_gets_4xx_openai_errors_and_no_hang() {
    use futures::StreamExt;

    let stack = hostile_stack().await;
    let addr = addr(&stack);
    let mut cases = Vec::new();
    corpus_bodies(&mut cases);
    corpus_headers(&mut cases);
    corpus_paths(&mut cases);
    assert!(cases.len() >= 250, "only {} cases", cases.len());

    let answers: Vec<(usize, Option<Raw>)> = futures::stream::iter(cases.iter().enumerate())
        .map(|(i, c)| {
            let addr = addr.clone();
            async move { (i, exchange(&addr, &c.bytes).await) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (i, answer) in &answers {
        let case = &cases[*i];
        *counts.entry(format!("{:?}", case.expect)).or_insert(0) += 1;
        if let Err(why) = judge(case, answer.as_ref()) {
            failures.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(counts.values().sum::<usize>(), cases.len(), "{counts:?}");

    let ready = stack
        .http
        .get(format!("{}/readyz", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    stack.stop().await;
}
