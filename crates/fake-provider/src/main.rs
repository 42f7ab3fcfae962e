//! `switchyard-fake-provider`: one fake provider as its own process, for benchmarks and
//! manual runs. It prints its base URL and serves until interrupted.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fake_provider::{FakeProvider, Format};

#[derive(Debug, Parser)]
#[command(about = "A fake LLM provider on loopback (no network, deterministic answers)")]
struct Args {
    /// Wire format: openai, anthropic, gemini or replicate.
    #[arg(long, default_value = "openai")]
    format: Format,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Delay before each answer's first byte, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Delay between streamed events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeProvider::bind(args.format, args.listen).await?;
    fake.set_latency(Duration::from_millis(args.latency_ms));
    fake.set_chunk_delay(Duration::from_millis(args.chunk_delay_ms));
    fake.forget_requests();
    writeln!(std::io::stdout(), "{}", fake.base_url())?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
