//! Connecting to NATS the same way in every process.

use std::time::Duration;

/// How long a first connection attempt may take before startup fails with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url`, naming the connection after the process role so `nats-server`
/// monitoring shows who is who.
pub async fn connect(
    url: &str,
    role: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(format!("switchyard-{role}"))
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
}

/// `url` with any `user:password@` replaced by `***@`, for logs and error messages.
pub fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redacted("nats://gateway:s3cret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(redacted("nats://token@host:4222"), "nats://***@host:4222");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("host:4222"), "host:4222");
    }
}
