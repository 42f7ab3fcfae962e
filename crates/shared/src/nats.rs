//! Connecting to NATS the same way in every process.

use std::time::Duration;

/// How long a first connection attempt may take before startup fails with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `url`, naming the connection after the process role so `nats-server`
/// monitoring shows who is who. Credentials in the URL (`nats://user:password@host` or
/// `nats://token@host`) are used to authenticate: the client library does not read them
/// from the URL itself.
pub async fn connect(
    url: &str,
    role: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("switchyard-{role}"))
        .connection_timeout(CONNECT_TIMEOUT);
    if let Ok(addr) = url.parse::<async_nats::ServerAddr>()
        && let Some(user) = addr.username()
    {
        options = match addr.password() {
            Some(password) => options.user_and_password(user.to_owned(), password.to_owned()),
            None => options.token(user.to_owned()),
        };
    }
    options.connect(url).await
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
