//! Connecting to NATS the same way in every process.

use std::time::Duration;

/// How long a first connection attempt may take before startup fails with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect waits up to this long; each further attempt doubles it. Small, because
/// every millisecond NATS is back and a process is not yet is a stalled request.
const RECONNECT_BASE: Duration = Duration::from_millis(25);
/// Longest wait between reconnect attempts. The client library's default (4 s) made
/// recovery from a NATS restart take up to 3 s longer than the restart itself; attempts
/// are one TCP connect each, so a few per second per process cost nothing.
const RECONNECT_CAP: Duration = Duration::from_millis(500);

/// Connects to `url` — one server, or several separated by commas (a cluster's nodes: the
/// client connects to any that answers and fails over between them) — naming the
/// connection after the process role so `nats-server` monitoring shows who is who.
/// Credentials in a URL (`nats://user:password@host` or `nats://token@host`) are used to
/// authenticate: the client library does not read them from the URL itself.
pub async fn connect(
    url: &str,
    role: &str,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("switchyard-{role}"))
        .connection_timeout(CONNECT_TIMEOUT)
        .reconnect_delay_callback(reconnect_delay);
    let servers: Vec<async_nats::ServerAddr> =
        servers(url).filter_map(|s| s.parse().ok()).collect();
    if let Some(addr) = servers.iter().find(|a| a.username().is_some())
        && let Some(user) = addr.username()
    {
        options = match addr.password() {
            Some(password) => options.user_and_password(user.to_owned(), password.to_owned()),
            None => options.token(user.to_owned()),
        };
    }
    if servers.is_empty() {
        // Let the client library say what is wrong with it.
        return options.connect(url).await;
    }
    options.connect(servers.as_slice()).await
}

/// What a process's `GET /readyz` says: ready when `client` is connected to NATS and `part`
/// (named in the body, e.g. `queue_available`) holds. Returns whether it is ready, and the
/// body.
pub fn readiness(
    client: &async_nats::Client,
    part: &str,
    holds: bool,
) -> (bool, serde_json::Value) {
    let connected = client.connection_state() == async_nats::connection::State::Connected;
    let ready = connected && holds;
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "nats_connected": connected,
    });
    body[part] = holds.into();
    (ready, body)
}

/// The servers a `nats.url` lists: comma-separated, blanks around them ignored.
pub fn servers(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// The wait before reconnect attempt `attempts` (1 for the first).
fn reconnect_delay(attempts: usize) -> Duration {
    let attempt = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    crate::backoff::full_jitter(RECONNECT_BASE, RECONNECT_CAP, attempt)
}

/// `url` with any `user:password@` replaced by `***@` (in each server of a list), for logs
/// and error messages.
pub fn redacted(url: &str) -> String {
    servers(url).map(redacted_one).collect::<Vec<_>>().join(",")
}

fn redacted_one(url: &str) -> String {
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

/// Pause before reopening a bucket watch that ended.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// Hands every entry of `store` to `on_entry`, the latest value of each key first and then
/// every change, until `shutdown`; a watch that ends is reopened (with history again, so
/// nothing written while it was down is missed: `on_entry` must ignore what it has seen,
/// by revision). `what` names the bucket in logs.
pub async fn follow_bucket(
    store: &async_nats::jetstream::kv::Store,
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut on_entry: impl FnMut(async_nats::jetstream::kv::Entry),
) {
    use futures::StreamExt;
    while !shutdown.is_cancelled() {
        match store.watch_with_history(">").await {
            Ok(mut entries) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    entry = entries.next() => match entry {
                        Some(Ok(entry)) => on_entry(entry),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, bucket = what, "bucket watch failed; reopening");
                            break;
                        }
                        None => break,
                    },
                }
            },
            Err(e) => tracing::warn!(error = %e, bucket = what, "could not watch a bucket"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(WATCH_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RECONNECT_CAP, reconnect_delay, redacted};

    #[test]
    fn reconnects_are_attempted_at_least_twice_a_second() {
        for attempts in [0, 1, 2, 10, 1000, usize::MAX] {
            assert!(reconnect_delay(attempts) <= RECONNECT_CAP);
        }
        assert!(RECONNECT_CAP <= std::time::Duration::from_millis(500));
    }

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redacted("nats://gateway:s3cret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(redacted("nats://token@host:4222"), "nats://***@host:4222");
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redacted("host:4222"), "host:4222");
        assert_eq!(
            redacted("nats://u:p@a:4222, nats://u:p@b:4222"),
            "nats://***@a:4222,nats://***@b:4222"
        );
    }
}
