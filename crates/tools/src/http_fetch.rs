//! `http_fetch`: fetches a URL a model gives and returns readable text — HTML converted to
//! text (`html2text`, the html5ever parser the browser engine Servo uses, rendered as plain
//! text with link footnotes), other text as it is, binaries refused — with the page's title,
//! its final URL and content type. Every URL and every redirect hop passes the SSRF guard
//! (`crate::ssrf`) and connections go only to addresses it vetted; the body is read as a
//! stream up to `max_bytes` and the whole fetch is bounded by `timeout_ms`.

use std::sync::Arc;

use bytes::BytesMut;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use shared::config::{HttpFetchConfig, SsrfConfig};
use shared::tools::{ToolError, ToolErrorClass};
use tokio_util::task::TaskTracker;
use url::Url;

use crate::fit;
use crate::ssrf::{Guard, Lookup, VetError, VettedResolver, vet_error_in};
use crate::upstream::{self, invalid};

/// Longest URL taken: browsers and servers cope with a few KiB at most.
const MAX_URL_CHARS: usize = 4096;
/// Columns HTML is rendered to: wide enough that prose is not broken into short lines.
const TEXT_WIDTH: usize = 100;
/// Bytes looked at to tell text from a binary when no content type is given.
const SNIFF_BYTES: usize = 1024;
/// Bytes searched for the `<title>`: it belongs in the head, near the top.
const TITLE_SEARCH_BYTES: usize = 64 * 1024;
/// Characters of a title kept.
const TITLE_CHARS: usize = 300;
/// Deepest element nesting converted: real pages nest a few dozen levels, rarely a few
/// hundred; the HTML parser's work grows with the square of the depth (5,000 nested `<div>`s,
/// 25 KB, take it seconds), so a deeper page is refused rather than parsed.
const MAX_NESTING: usize = 512;
/// Elements that never have content (no end tag).
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr", "param", "keygen", "basefont", "bgsound", "frame",
];
/// Elements whose content is text, not markup, up to their end tag.
const RAW_TEXT: &[&str] = &[
    "script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes",
];
/// HTML elements that, met inside SVG or MathML, end the foreign content (the parser closes
/// it and goes on in HTML).
const BREAKOUT: &[&str] = &[
    "b",
    "big",
    "blockquote",
    "body",
    "br",
    "center",
    "code",
    "dd",
    "div",
    "dl",
    "dt",
    "em",
    "embed",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "hr",
    "i",
    "img",
    "li",
    "listing",
    "menu",
    "meta",
    "nobr",
    "ol",
    "p",
    "pre",
    "ruby",
    "s",
    "small",
    "span",
    "strong",
    "strike",
    "sub",
    "sup",
    "table",
    "tt",
    "u",
    "ul",
    "var",
];
/// Elements the parser closes when a sibling opens (`<p>a<p>b`, `<li>`, cells, `<a>`), or
/// never nests (`<form>`): they do not nest by repetition, so they are not counted.
const AUTO_CLOSED: &[&str] = &[
    "a", "button", "form", "nobr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup",
    "tbody", "thead", "tfoot", "colgroup", "rb", "rt", "rp", "rtc",
];
/// The HTML parser's "special" elements: an ordinary end tag does not close past one.
const SPECIAL: &[&str] = &[
    "address",
    "applet",
    "area",
    "article",
    "aside",
    "base",
    "basefont",
    "bgsound",
    "blockquote",
    "body",
    "br",
    "button",
    "caption",
    "center",
    "col",
    "colgroup",
    "dd",
    "details",
    "dir",
    "div",
    "dl",
    "dt",
    "embed",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "frame",
    "frameset",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "header",
    "hgroup",
    "hr",
    "html",
    "iframe",
    "img",
    "input",
    "keygen",
    "li",
    "link",
    "listing",
    "main",
    "marquee",
    "menu",
    "meta",
    "nav",
    "noembed",
    "noframes",
    "noscript",
    "object",
    "ol",
    "p",
    "param",
    "plaintext",
    "pre",
    "script",
    "search",
    "section",
    "select",
    "source",
    "style",
    "summary",
    "table",
    "tbody",
    "td",
    "template",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "track",
    "ul",
    "wbr",
    "xmp",
];
/// Elements that bound the parser's "in scope" search: a special end tag does not close past
/// one.
const SCOPE: &[&str] = &[
    "applet", "caption", "html", "table", "td", "th", "marquee", "object", "template",
];
const ACCEPT: &str = "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.1";
const USER_AGENT: &str = concat!(
    "Mozilla/5.0 (compatible; Switchyard-http_fetch/",
    env!("CARGO_PKG_VERSION"),
    ")"
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Arguments {
    url: String,
}

/// What a body is, by its content type (or, without one, by its first bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Html,
    Text,
    Binary,
}

/// The fetcher: a client whose resolver is the guard's, which follows no redirect itself,
/// uses no proxy (a proxy would resolve names the guard never saw) and keeps no idle
/// connections (each fetch resolves, and is vetted, afresh).
#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<Guard>,
    config: HttpFetchConfig,
    /// Where HTML is converted.
    blocking: TaskTracker,
}

impl Fetcher {
    pub fn new(
        config: &HttpFetchConfig,
        ssrf: &SsrfConfig,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, reqwest::Error> {
        let guard = Arc::new(Guard::new(ssrf));
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .dns_resolver(Arc::new(VettedResolver::new(guard.clone(), lookup)))
            .build()?;
        Ok(Self {
            client,
            guard,
            config: config.clone(),
            blocking: TaskTracker::new(),
        })
    }

    /// The tool.
    pub async fn call(&self, arguments: &Value) -> Result<Value, ToolError> {
        let args: Arguments = upstream::arguments("http_fetch", arguments)?;
        let text = args.url.trim();
        if text.chars().count() > MAX_URL_CHARS {
            return Err(invalid(format!(
                "`url` is longer than {MAX_URL_CHARS} characters"
            )));
        }
        let url = Url::parse(text).map_err(|e| invalid(format!("`url` is not a URL: {e}")))?;
        upstream::within(self.config.timeout(), &host_of(&url), self.fetch(url)).await
    }

    async fn fetch(&self, requested: Url) -> Result<Value, ToolError> {
        let mut url = requested.clone();
        let mut redirects = 0;
        let mut response = loop {
            self.guard.check_url(&url).map_err(denied)?;
            let response = self
                .client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, ACCEPT)
                .send()
                .await
                .map_err(|e| send_error(&e, &url))?;
            let Some(next) = redirect(&response, &url)? else {
                break response;
            };
            redirects += 1;
            if redirects > self.config.max_redirects {
                return Err(ToolError::new(
                    ToolErrorClass::Upstream,
                    format!(
                        "{} redirects more than {} times",
                        requested, self.config.max_redirects
                    ),
                ));
            }
            url = next;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(ToolError::new(
                ToolErrorClass::Upstream,
                format!("{url} answered {status}"),
            ));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let declared = content_type.as_deref().map(kind_of);
        if let (Some(Kind::Binary), Some(ct)) = (declared, &content_type) {
            return Err(binary(&url, ct));
        }
        // Read as a stream up to the cap; the rest is never read (the connection closes
        // when the response is dropped).
        let mut body = BytesMut::new();
        let mut cut = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| send_error(&e, &url))? {
            let room = self.config.max_bytes - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        drop(response);
        let kind = declared.unwrap_or_else(|| sniff(&body));
        if kind == Kind::Binary {
            return Err(binary(&url, content_type.as_deref().unwrap_or("binary")));
        }
        let body = body.freeze();
        let (title, text) = match kind {
            Kind::Html => {
                if nests_deeper_than(&body, MAX_NESTING) {
                    return Err(ToolError::new(
                        ToolErrorClass::Upstream,
                        format!("{url} nests elements more than {MAX_NESTING} deep: not converted"),
                    ));
                }
                // Parsing a large page is CPU work: off the runtime's threads.
                let html = body.clone();
                self.blocking
                    .spawn_blocking(move || (title(&html), html_text(&html)))
                    .await
                    .map_err(|e| ToolError::new(ToolErrorClass::Internal, e.to_string()))?
            }
            Kind::Text | Kind::Binary => (None, String::from_utf8_lossy(&body).into_owned()),
        };
        let mut result = Map::new();
        result.insert("url".into(), json!(requested.as_str()));
        result.insert("final_url".into(), json!(url.as_str()));
        result.insert("status".into(), json!(status.as_u16()));
        result.insert("content_type".into(), json!(content_type));
        if let Some(title) = title {
            result.insert("title".into(), json!(title));
        }
        result.insert("bytes_read".into(), json!(body.len()));
        if cut {
            result.insert("truncated".into(), json!(true));
        }
        result.insert("text".into(), json!(text));
        fit::text(Value::Object(result), "text")
    }
}

/// The next URL when `response` is a redirect with a `Location`.
fn redirect(response: &reqwest::Response, from: &Url) -> Result<Option<Url>, ToolError> {
    let status = response.status();
    if !matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    ) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(LOCATION) else {
        return Ok(None);
    };
    let next = location
        .to_str()
        .ok()
        .and_then(|l| from.join(l).ok())
        .ok_or_else(|| {
            ToolError::new(
                ToolErrorClass::Upstream,
                format!("{from} redirects to an invalid location"),
            )
        })?;
    Ok(Some(next))
}

fn host_of(url: &Url) -> String {
    url.host_str().unwrap_or("the URL").to_owned()
}

fn denied(e: crate::ssrf::Denied) -> ToolError {
    ToolError::new(ToolErrorClass::Denied, e.0)
}

/// A failed request: the guard's refusal (`denied`), a name that did not resolve, a
/// timeout, or another transport failure (`upstream`).
fn send_error(error: &reqwest::Error, url: &Url) -> ToolError {
    match vet_error_in(error) {
        Some(VetError::Denied(d)) => denied(d),
        Some(VetError::Lookup(m)) => ToolError::new(ToolErrorClass::Upstream, m),
        None if error.is_timeout() => ToolError::new(
            ToolErrorClass::Timeout,
            format!("{} did not answer in time", host_of(url)),
        ),
        None => ToolError::new(
            ToolErrorClass::Upstream,
            format!("fetching {url}: {}", upstream::causes(error)),
        ),
    }
}

fn binary(url: &Url, content_type: &str) -> ToolError {
    invalid(format!(
        "{url} is {content_type}, not text: http_fetch reads HTML and text only"
    ))
}

/// The kind a `Content-Type` names.
fn kind_of(content_type: &str) -> Kind {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/html" | "application/xhtml+xml" => Kind::Html,
        "" => Kind::Text,
        e if e.starts_with("text/") => Kind::Text,
        e if e.ends_with("+json") || e.ends_with("+xml") => Kind::Text,
        "application/json"
        | "application/xml"
        | "application/javascript"
        | "application/ecmascript"
        | "application/x-ndjson"
        | "application/yaml"
        | "application/x-yaml"
        | "application/toml"
        | "application/csv"
        | "application/x-sh" => Kind::Text,
        _ => Kind::Binary,
    }
}

/// The kind of a body that came without a content type: a NUL byte or invalid UTF-8 in its
/// first KiB makes it a binary; text that opens like HTML is HTML.
fn sniff(body: &[u8]) -> Kind {
    let head = &body[..body.len().min(SNIFF_BYTES)];
    if head.contains(&0) {
        return Kind::Binary;
    }
    let text = match std::str::from_utf8(head) {
        Ok(t) => t,
        // A multi-byte character cut at the end of the window is still text.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()
        }
        Err(_) => return Kind::Binary,
    };
    let start = text.trim_start().to_ascii_lowercase();
    if start.starts_with("<!doctype html") || start.starts_with("<html") {
        Kind::Html
    } else {
        Kind::Text
    }
}

/// The readable text of an HTML document.
fn html_text(body: &[u8]) -> String {
    match html2text::config::plain_no_decorate()
        .link_footnotes(true)
        .string_from_read(body, TEXT_WIDTH)
    {
        Ok(text) => text,
        // html5ever accepts any input; a render failure leaves the raw text, which a
        // model can still read.
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// Whether `html` nests elements deeper than `limit`, as the parser would build them: start
/// tags open, but void and [`AUTO_CLOSED`] elements (and, inside SVG or MathML, self-closed
/// ones: in HTML `<div/>` opens a `div`); an end tag closes back to the element it names
/// when one is open (an end tag nothing matches closes nothing, as in the parser); comments
/// and the text of [`RAW_TEXT`] elements are skipped. Linear: the scan stops once the limit
/// is passed.
fn nests_deeper_than(html: &[u8], limit: usize) -> bool {
    let lower = html.to_ascii_lowercase();
    let mut open: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while let Some(offset) = lower[at..].iter().position(|&b| b == b'<') {
        at += offset + 1;
        let rest = &lower[at..];
        if rest.starts_with(b"!--") {
            at += find(rest, b"-->").map_or(rest.len(), |end| end + 3);
            continue;
        }
        let closing = rest.first() == Some(&b'/');
        let name_at = usize::from(closing);
        let name_len = rest[name_at..]
            .iter()
            .position(|b| !b.is_ascii_alphanumeric() && *b != b'-')
            .unwrap_or(rest.len() - name_at);
        let name = &rest[name_at..name_at + name_len];
        if name.is_empty() || !name[0].is_ascii_alphabetic() {
            continue;
        }
        let tag_end = rest.iter().position(|&b| b == b'>').unwrap_or(rest.len());
        let self_closed = tag_end > 0 && rest[tag_end - 1] == b'/';
        at += tag_end;
        let is = |list: &[&str]| list.iter().any(|t| t.as_bytes() == name);
        let foreign = open.iter().position(|n| *n == b"svg" || *n == b"math");
        if closing {
            // As the parser does: an end tag closes back to the element it names, unless an
            // element on the way stops it (any special element for an ordinary end tag, a
            // scope boundary for a special one); then it closes nothing. Closing past those
            // would count `<span><div></span>` as depth 1 while the parser nests it.
            let stoppers = if is(SPECIAL) { SCOPE } else { SPECIAL };
            for i in (0..open.len()).rev() {
                if open[i] == name {
                    open.truncate(i);
                    break;
                }
                if stoppers.iter().any(|t| t.as_bytes() == open[i]) {
                    break;
                }
            }
            continue;
        }
        if let Some(i) = foreign {
            if is(BREAKOUT) {
                open.truncate(i);
            } else if self_closed {
                continue;
            }
        } else if self_closed && (name == b"svg" || name == b"math") {
            continue;
        }
        if is(RAW_TEXT) {
            let mut end_tag = b"</".to_vec();
            end_tag.extend_from_slice(name);
            at += find(&lower[at..], &end_tag).unwrap_or(lower.len() - at);
        } else if !(is(VOID) || is(AUTO_CLOSED)) {
            open.push(name);
            if open.len() > limit {
                return true;
            }
        }
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The document's `<title>`, entities decoded and whitespace collapsed. A title holds only
/// text (no elements), so finding its tags is enough; its text is decoded by rendering it
/// as HTML.
fn title(body: &[u8]) -> Option<String> {
    let head = String::from_utf8_lossy(&body[..body.len().min(TITLE_SEARCH_BYTES)]);
    let lower = head.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let raw = &head[start..end];
    let text = html2text::config::plain()
        .string_from_read(format!("<p>{raw}</p>").as_bytes(), usize::MAX / 2)
        .unwrap_or_else(|_| raw.to_owned());
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!text.is_empty()).then(|| shared::tools::clip(&text, TITLE_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_decide_html_text_or_binary() {
        for (value, kind) in [
            ("text/html; charset=utf-8", Kind::Html),
            ("application/xhtml+xml", Kind::Html),
            ("TEXT/PLAIN", Kind::Text),
            ("application/json", Kind::Text),
            ("application/ld+json", Kind::Text),
            ("image/svg+xml", Kind::Text),
            ("text/csv", Kind::Text),
            ("image/png", Kind::Binary),
            ("application/pdf", Kind::Binary),
            ("application/octet-stream", Kind::Binary),
        ] {
            assert_eq!(kind_of(value), kind, "{value}");
        }
        assert_eq!(sniff(b"  <!DOCTYPE html><title>x</title>"), Kind::Html);
        assert_eq!(sniff(b"plain words"), Kind::Text);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Kind::Binary);
        assert_eq!(sniff(&[0xff, 0xfe, 0x41]), Kind::Binary);
        // A character cut at the window's end is still text.
        let mut long = "é".repeat(SNIFF_BYTES);
        long.push('x');
        assert_eq!(sniff(long.as_bytes()), Kind::Text);
    }

    #[test]
    fn html_becomes_text_with_its_title() {
        let page = br#"<!doctype html><html><head><meta charset="utf-8">
            <TITLE> Cycling &amp; safety
              in Lisbon </TITLE><style>body { color: red }</style>
            <script>var secret = 1;</script></head>
            <body><h1>Bike lanes</h1><p>Lisbon added <b>200 km</b> of lanes.</p>
            <ul><li>One</li><li>Two</li></ul><a href="https://example.org/more">More</a></body></html>"#;
        assert_eq!(title(page).as_deref(), Some("Cycling & safety in Lisbon"));
        let text = html_text(page);
        assert!(text.contains("Bike lanes"), "{text}");
        assert!(text.contains("Lisbon added 200 km of lanes."), "{text}");
        assert!(text.contains("* One"), "{text}");
        assert!(text.contains("https://example.org/more"), "{text}");
        assert!(
            !text.contains("color: red") && !text.contains("var secret"),
            "{text}"
        );
        assert_eq!(title(b"<html><body>no title</body></html>"), None);
        assert_eq!(title(b"<title></title>"), None);
    }

    #[test]
    fn pages_nested_too_deep_are_caught_before_parsing() {
        assert!(nests_deeper_than("<div>".repeat(600).as_bytes(), 512));
        assert!(!nests_deeper_than("<div>".repeat(500).as_bytes(), 512));
        // End tags that close nothing do not hide the nesting.
        assert!(nests_deeper_than("<b></x>".repeat(600).as_bytes(), 512));
        assert!(nests_deeper_than("<ul><li>".repeat(600).as_bytes(), 512));
        // An ordinary end tag does not close past a special element, nor a special end tag
        // past a scope boundary, so these nest as the parser nests them.
        assert!(nests_deeper_than(
            "<span><div></span>".repeat(600).as_bytes(),
            512
        ));
        assert!(nests_deeper_than(
            "<div><table></div>".repeat(600).as_bytes(),
            512
        ));
        // Sloppy but ordinary closing still closes.
        let sloppy = "<div><span>x</div><span><b>y</span>".repeat(2000);
        assert!(!nests_deeper_than(sloppy.as_bytes(), 512));
        // In HTML a self-closed `<div/>` opens a div; in SVG a `<path/>` opens nothing, but
        // an HTML element there leaves the SVG.
        assert!(nests_deeper_than("<div/>".repeat(600).as_bytes(), 512));
        let icons = format!("<svg>{}</svg>", "<path d='M0 0'/>".repeat(2000)).repeat(3);
        assert!(!nests_deeper_than(icons.as_bytes(), 512));
        assert!(nests_deeper_than(
            format!("<svg>{}", "<div/>".repeat(600)).as_bytes(),
            512
        ));
        // Closed, void and auto-closed elements, comments and script text do not count.
        let flat = "<div><p>a<p>b<br><img src=x><br/><li>c</div><!-- <div><div> -->".repeat(2000)
            + &format!("<script>{}</script>", "<div>".repeat(2000))
            + &format!("<style>{}</style>", "<div>".repeat(2000));
        assert!(!nests_deeper_than(flat.as_bytes(), 512));
        // Unterminated bits end the scan.
        assert!(!nests_deeper_than(b"<div><!-- open", 512));
        assert!(!nests_deeper_than(b"<script><div><div>", 1));
        assert!(!nests_deeper_than(b"<", 1));
        assert!(!nests_deeper_than(b"</", 1));
        assert!(!nests_deeper_than("<é>".as_bytes(), 0));
    }
}
