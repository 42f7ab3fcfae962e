//! CORS: which browser origins may call the API, and which answer headers their pages may
//! read. Off unless `gateway.cors_allowed_origins` lists origins: the gateway does not
//! authenticate yet, so no page may use it by default.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tracing::warn;

use crate::headers;

/// How long a browser may reuse a preflight answer: one preflight per endpoint an hour
/// rather than one per call; browsers cap it lower anyway (Chrome: 2 hours).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3_600);

/// Answer headers a page may read: Switchyard's own, `Retry-After` on 429/503, and a
/// context entry's revision (`ETag`), which its next write names.
const EXPOSED: [HeaderName; 9] = [
    HeaderName::from_static(headers::TASK_ID),
    HeaderName::from_static(headers::PROVIDER),
    HeaderName::from_static(headers::MODEL),
    HeaderName::from_static(headers::ATTEMPTS),
    HeaderName::from_static(headers::FALLBACK_DEPTH),
    HeaderName::from_static(headers::OVERHEAD_MS),
    HeaderName::from_static(headers::WRITER),
    header::RETRY_AFTER,
    header::ETAG,
];

/// The CORS layer for `origins`, or `None` when none is listed (no CORS headers at all).
///
/// Request headers are mirrored rather than listed: the SDKs send their own (`authorization`,
/// `x-stainless-*`, `openai-*`, `idempotency-key`), the gateway trusts none of them for
/// access, and only the listed origins get any answer. No credentials (cookies): the
/// gateway uses none.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| {
            // Configuration validation already refused origins that are not header values.
            HeaderValue::from_str(origin)
                .inspect_err(|_| warn!(origin, "skipping a CORS origin that is not a header value"))
                .ok()
        })
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(EXPOSED)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}
