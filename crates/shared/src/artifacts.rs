//! The `artifacts` object store: large inputs and outputs (documents, code files, reports)
//! stored once, in chunks, and carried everywhere else by reference ([`ArtifactRef`]), so no
//! task, result, workflow state or context entry holds megabytes or exceeds NATS's message
//! size.
//!
//! An artifact has an id (a checked token, like every name that reaches a subject), its
//! bytes, a content type and the SHA-256 of its bytes. The object store computes the digest
//! while it stores the chunks and keeps it in the object's metadata; [`Artifacts::get`]
//! checks the bytes it read against it, so a corrupted or half-replaced object is an error,
//! never silently wrong bytes. Writing an id again replaces the artifact whole (readers see
//! the old or the new one), which is what makes a redelivered step's write harmless: its id is
//! derived from the step's task id ([`step_id`]) and its bytes are the same.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_nats::jetstream::object_store::{
    GetErrorKind, InfoErrorKind, Object, ObjectInfo, ObjectMetadata, ObjectStore, PutErrorKind,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::TaskId;
use crate::names::{NameError, check_token};

/// The content type of an artifact stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
/// The content type of a step's output stored as an artifact.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
/// Longest content type accepted: real ones are a few dozen characters.
pub const MAX_CONTENT_TYPE_LEN: usize = 200;
/// Bytes of an output kept inline as its preview when the output itself is an artifact:
/// enough to recognise it in `GET /v1/tasks/{id}`, small enough that a workflow with many
/// such steps stays small.
pub const PREVIEW_BYTES: usize = 1024;
/// Where an artifact's content type is kept in the object's metadata.
const META_CONTENT_TYPE: &str = "content-type";
/// How the object store writes its digest: `SHA-256=<base64url of the 32 bytes>`.
const DIGEST_PREFIX: &str = "SHA-256=";

/// What a task, step, result or context entry carries instead of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub id: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    pub content_type: String,
}

/// An artifact as stored: its reference and when this version was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub reference: ArtifactRef,
    /// Unix milliseconds.
    pub created_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact id {0}")]
    BadId(NameError),
    #[error(
        "content type must be 1 to {MAX_CONTENT_TYPE_LEN} visible ASCII characters like text/plain"
    )]
    BadContentType,
    #[error("the artifact is larger than the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error("reading the artifact's bytes from its source failed: {0}")]
    Read(String),
    #[error("the artifact's bytes do not match its SHA-256 ({0})")]
    Corrupt(String),
    #[error("artifact store: {0}")]
    Store(String),
}

/// The store, with the size limit every write is held to.
#[derive(Clone)]
pub struct Artifacts {
    store: ObjectStore,
    max_bytes: u64,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl Artifacts {
    pub fn new(store: ObjectStore, max_bytes: u64) -> Self {
        Self { store, max_bytes }
    }

    /// The largest artifact accepted (`artifacts.max_bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Stores what `data` yields as artifact `id`, replacing any artifact of that id, without
    /// holding it in memory (it goes out in chunks as it is read). Refused with
    /// [`ArtifactError::TooLarge`] as soon as more than the limit has been read.
    pub async fn put(
        &self,
        id: &str,
        content_type: &str,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<ArtifactInfo, ArtifactError> {
        check_id(id)?;
        check_content_type(content_type)?;
        let meta = ObjectMetadata {
            name: id.to_owned(),
            metadata: HashMap::from([(META_CONTENT_TYPE.to_owned(), content_type.to_owned())]),
            ..Default::default()
        };
        let mut limited = Limited {
            inner: data,
            seen: 0,
            limit: self.max_bytes,
            over: false,
        };
        match self.store.put(meta, &mut limited).await {
            Ok(info) => artifact_info(&info),
            Err(_) if limited.over => Err(ArtifactError::TooLarge {
                limit: self.max_bytes,
            }),
            Err(e) if e.kind() == PutErrorKind::ReadChunks => {
                Err(ArtifactError::Read(e.to_string()))
            }
            Err(e) => Err(ArtifactError::Store(e.to_string())),
        }
    }

    /// Stores `bytes` as artifact `id` (see [`Artifacts::put`]).
    pub async fn put_bytes(
        &self,
        id: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<ArtifactInfo, ArtifactError> {
        let mut reader = bytes;
        self.put(id, content_type, &mut reader).await
    }

    /// The artifact's reference and age, if it exists.
    pub async fn info(&self, id: &str) -> Result<Option<ArtifactInfo>, ArtifactError> {
        check_id(id)?;
        match self.store.info(id).await {
            Ok(info) if info.deleted => Ok(None),
            Ok(info) => artifact_info(&info).map(Some),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArtifactError::Store(e.to_string())),
        }
    }

    /// The artifact as a reader, for streaming it out; the reader fails at its end if the
    /// bytes do not match the stored SHA-256.
    pub async fn open(&self, id: &str) -> Result<Option<(ArtifactInfo, Object)>, ArtifactError> {
        check_id(id)?;
        match self.store.get(id).await {
            Ok(object) => Ok(Some((artifact_info(object.info())?, object))),
            Err(e) if e.kind() == GetErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArtifactError::Store(e.to_string())),
        }
    }

    /// The artifact's bytes, checked against its SHA-256 and size.
    pub async fn get(&self, id: &str) -> Result<Option<(ArtifactInfo, Vec<u8>)>, ArtifactError> {
        let Some((info, mut object)) = self.open(id).await? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(info.reference.bytes).unwrap_or(0));
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| ArtifactError::Store(e.to_string()))?;
        verify(&info.reference, &bytes)?;
        Ok(Some((info, bytes)))
    }
}

/// Checks `bytes` against the size and SHA-256 `reference` names.
pub fn verify(reference: &ArtifactRef, bytes: &[u8]) -> Result<(), ArtifactError> {
    if u64::try_from(bytes.len()).ok() != Some(reference.bytes) {
        return Err(ArtifactError::Corrupt(format!(
            "{} bytes read, {} stored",
            bytes.len(),
            reference.bytes
        )));
    }
    let actual = sha256_hex(bytes);
    if actual != reference.sha256 {
        return Err(ArtifactError::Corrupt(format!(
            "read {actual}, stored {}",
            reference.sha256
        )));
    }
    Ok(())
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Checks an artifact id: a token like every other name that reaches a subject (lowercase
/// letters, digits, `-`, `_`, at most 64 characters).
pub fn check_id(id: &str) -> Result<(), ArtifactError> {
    check_token(id).map_err(ArtifactError::BadId)
}

/// Checks a content type: visible ASCII (spaces allowed inside), bounded, with a `/`.
pub fn check_content_type(content_type: &str) -> Result<(), ArtifactError> {
    let visible = content_type
        .bytes()
        .all(|b| b.is_ascii_graphic() || b == b' ');
    if content_type.is_empty()
        || content_type.len() > MAX_CONTENT_TYPE_LEN
        || !visible
        || !content_type.contains('/')
        || content_type.starts_with(' ')
    {
        return Err(ArtifactError::BadContentType);
    }
    Ok(())
}

/// The id of the artifact holding the output of the step whose task is `task`: the same
/// on every delivery of that task, so a redelivery rewrites the same artifact.
pub fn step_id(task: TaskId) -> String {
    format!("{STEP_PREFIX}{task}")
}

/// Prefixes of the ids Switchyard stores under itself (step outputs, large responses):
/// callers may not write them ([`reserved`]), so an artifact the system refers to is only
/// ever written by the system.
const STEP_PREFIX: &str = "step-";
const RESULT_PREFIX: &str = "result-";

/// Whether `id` names an artifact only Switchyard writes.
pub fn reserved(id: &str) -> bool {
    id.starts_with(STEP_PREFIX) || id.starts_with(RESULT_PREFIX)
}

impl Artifacts {
    /// Stores `result`'s response as the artifact [`result_id`] and answers the result as it
    /// is then stored: the same, with [`TaskResult::response_artifact`] in place of the
    /// response. Called when the result would not fit a NATS message.
    ///
    /// [`TaskResult::response_artifact`]: crate::TaskResult::response_artifact
    pub async fn offload_response(
        &self,
        result: &crate::TaskResult,
    ) -> Result<crate::TaskResult, ArtifactError> {
        let mut small = result.clone();
        let Some(response) = small.response.take() else {
            return Ok(small);
        };
        let json = serde_json::to_vec(&response).map_err(|e| ArtifactError::Read(e.to_string()))?;
        let info = self
            .put_bytes(
                &result_id(result.id, result.delivery),
                "application/json",
                &json,
            )
            .await?;
        small.response_artifact = Some(Box::new(info.reference));
        Ok(small)
    }

    /// Puts back the response of a result stored by reference (a result without one is left
    /// as it is).
    pub async fn resolve_response(
        &self,
        result: &mut crate::TaskResult,
    ) -> Result<(), ArtifactError> {
        let Some(reference) = &result.response_artifact else {
            return Ok(());
        };
        let Some((_, bytes)) = self.get(&reference.id).await? else {
            return Err(ArtifactError::Store(format!(
                "the response artifact `{}` is gone",
                reference.id
            )));
        };
        // The bytes the result names, not just bytes that match their own digest.
        verify(reference, &bytes)?;
        let response =
            serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Corrupt(e.to_string()))?;
        result.response = Some(response);
        result.response_artifact = None;
        Ok(())
    }
}

/// The id of the artifact holding the response that delivery `delivery` of task `task`
/// made, when its result would not fit a NATS message
/// ([`crate::TaskResult::response_artifact`]). One per delivery: a delivery that loses the
/// race to store the result never replaces the winner's response.
pub fn result_id(task: TaskId, delivery: u64) -> String {
    format!("{RESULT_PREFIX}{task}-{delivery}")
}

/// The head of `text`, at most `max` bytes, cut at a character boundary.
pub fn preview(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn artifact_info(info: &ObjectInfo) -> Result<ArtifactInfo, ArtifactError> {
    let sha256 = info.digest.as_deref().and_then(digest_hex).ok_or_else(|| {
        ArtifactError::Corrupt(format!("object `{}` has no SHA-256 digest", info.name))
    })?;
    let content_type = info
        .metadata
        .get(META_CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_owned());
    let created_ms = info
        .modified
        .map(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or_default())
        .unwrap_or_default();
    Ok(ArtifactInfo {
        reference: ArtifactRef {
            id: info.name.clone(),
            bytes: u64::try_from(info.size).unwrap_or(u64::MAX),
            sha256,
            content_type,
        },
        created_ms,
    })
}

/// `SHA-256=<base64url>` (as the object store writes it, padded or not) as lowercase hex.
fn digest_hex(digest: &str) -> Option<String> {
    let encoded = digest.strip_prefix(DIGEST_PREFIX)?;
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
        .ok()?;
    (bytes.len() == 32).then(|| hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A reader that fails once more than `limit` bytes have come through, noting why.
struct Limited<'a, R> {
    inner: &'a mut R,
    seen: u64,
    limit: u64,
    over: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Limited<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        ready!(Pin::new(&mut *this.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        this.seen = this
            .seen
            .saturating_add(u64::try_from(read).unwrap_or(u64::MAX));
        if this.seen > this.limit {
            this.over = true;
            // A failed read hands back nothing.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::other("the artifact is over the size limit")));
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_tokens() {
        assert!(check_id("report-2026_q3").is_ok());
        assert!(check_id(&step_id(TaskId::new())).is_ok());
        for bad in ["", "a.b", "a*", ">", "A", "a b", "-a", &"x".repeat(65)] {
            assert!(
                matches!(check_id(bad), Err(ArtifactError::BadId(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn content_types_are_bounded_visible_ascii() {
        for good in ["text/plain", "application/pdf", "text/plain; charset=utf-8"] {
            assert!(check_content_type(good).is_ok(), "{good}");
        }
        let long = format!("text/{}", "x".repeat(MAX_CONTENT_TYPE_LEN));
        for bad in [
            "",
            "plain",
            "text/plain\r\nx: y",
            "tëxt/plain",
            " text/plain",
            &long,
        ] {
            assert!(check_content_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_stores_digest_reads_as_hex() {
        // SHA-256 of "abc", as the object store writes it.
        let hex_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), hex_abc);
        let encoded = base64::engine::general_purpose::URL_SAFE
            .encode(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref());
        assert_eq!(
            digest_hex(&format!("SHA-256={encoded}")).as_deref(),
            Some(hex_abc)
        );
        assert_eq!(
            digest_hex(&format!("SHA-256={}", encoded.trim_end_matches('='))).as_deref(),
            Some(hex_abc)
        );
        assert_eq!(digest_hex("MD5=abc"), None);
        assert_eq!(digest_hex("SHA-256=AAAA"), None);
    }

    #[test]
    fn verify_checks_size_and_digest() {
        let reference = ArtifactRef {
            id: "a".into(),
            bytes: 3,
            sha256: sha256_hex(b"abc"),
            content_type: TEXT_CONTENT_TYPE.into(),
        };
        assert!(verify(&reference, b"abc").is_ok());
        assert!(matches!(
            verify(&reference, b"abd"),
            Err(ArtifactError::Corrupt(_))
        ));
        assert!(matches!(
            verify(&reference, b"abcd"),
            Err(ArtifactError::Corrupt(_))
        ));
    }

    #[test]
    fn previews_cut_at_a_character_boundary() {
        assert_eq!(preview("short", 10), "short");
        assert_eq!(preview("abcdef", 3), "abc");
        // "é" is two bytes: a cut inside it backs off to before it.
        assert_eq!(preview("aé", 2), "a");
        assert_eq!(preview("", 0), "");
    }

    #[tokio::test]
    async fn the_limit_refuses_one_byte_more() {
        let data = vec![7_u8; 10];
        let mut source: &[u8] = &data;
        let mut limited = Limited {
            inner: &mut source,
            seen: 0,
            limit: 10,
            over: false,
        };
        let mut out = Vec::new();
        limited.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len(), 10);
        let data = vec![7_u8; 11];
        let mut source: &[u8] = &data;
        let mut limited = Limited {
            inner: &mut source,
            seen: 0,
            limit: 10,
            over: false,
        };
        assert!(limited.read_to_end(&mut Vec::new()).await.is_err());
        assert!(limited.over);
    }
}
