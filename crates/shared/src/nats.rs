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
