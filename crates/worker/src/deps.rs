//! What a worker's task handlers share: the NATS handles, the results and attempts buckets,
//! provider health, and each configured provider's adapter with its timeouts. Built once in
//! `lib.rs`; every module that handles a task reads it from here, none owns it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use shared::config::{ProviderConfig, RouteConfig};

use crate::health::Health;
use crate::provider::Provider;

/// One configured provider's adapter and timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    pub provider: Provider,
    pub timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What handling a task needs; shared by every in-flight task of a worker.
#[derive(Debug)]
pub(crate) struct Deps {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: kv::Store,
    pub attempts: kv::Store,
    pub health: Arc<Health>,
    pub runtimes: HashMap<String, Runtime>,
    pub provider_configs: BTreeMap<String, ProviderConfig>,
    pub routes: BTreeMap<String, RouteConfig>,
    /// Where the next key rotation starts, so load spreads over a pool.
    pub rotation: AtomicUsize,
    pub worker_id: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
}
