//! Path parameters in our error shape. axum's `Path` answers a parameter it cannot decode
//! (`%ff` is not UTF-8) with a plain-text 400; [`PathParam`] wraps it so that refusal is an
//! OpenAI-shaped error naming the parameter, like every other.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tracing::error;

use crate::error::ApiError;

/// A path parameter, extracted like `axum::extract::Path`.
#[derive(Debug)]
pub struct PathParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(refusal(&rejection)),
        }
    }
}

fn refusal(rejection: &PathRejection) -> ApiError {
    // A 5xx here is a route that does not match its handler: ours to fix, not the caller's.
    if rejection.status().is_server_error() {
        error!(rejection = %rejection.body_text(), "path parameters do not fit the handler");
        return ApiError::Internal;
    }
    let param = match rejection {
        PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
            ErrorKind::InvalidUtf8InPathParam { key }
            | ErrorKind::ParseErrorAtKey { key, .. }
            | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
            _ => None,
        },
        _ => None,
    };
    ApiError::invalid(
        param.unwrap_or_else(|| "path".to_owned()),
        rejection.body_text(),
    )
}
