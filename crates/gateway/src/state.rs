//! What every handler shares.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use shared::Capability;
use shared::config::Config;

use crate::replies::ReplyRouter;

#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub results: kv::Store,
    /// Shared provider health, for `GET /v1/providers`.
    pub providers: kv::Store,
    pub replies: ReplyRouter,
    /// Capability of each route, parsed once.
    pub route_capabilities: Arc<HashMap<String, Capability>>,
    /// Capability of `provider/model` requests.
    pub default_capability: Capability,
    /// Every configured capability (each has consumers).
    pub capabilities: Arc<BTreeSet<Capability>>,
}
