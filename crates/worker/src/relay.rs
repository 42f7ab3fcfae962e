//! The headers on what a worker sends a task's caller over core NATS: chunks on
//! `stream.<task id>` and the result on `reply_to` (`docs/protocol.md`, Streaming).

use async_nats::HeaderMap;
use shared::StreamEventKind;
use shared::names::{HEADER_DELIVERY, HEADER_EVENT};

/// `Switchyard-Event` and `Switchyard-Delivery`, on every chunk and result.
pub(crate) fn event_headers(kind: StreamEventKind, delivery: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_EVENT, kind.as_str());
    headers.insert(HEADER_DELIVERY, delivery.to_string().as_str());
    headers
}
