//! The agents a deployment runs *now*: its configured catalog with the profiles of the
//! `agents` bucket laid over it. A stored profile adds an agent, or replaces the configured
//! one of the same name; deleting it brings the configured one back. Teams stay as
//! configured. Every process keeps a copy, loaded at start and kept current by a watch of
//! the bucket, so every replica sees a change made through any of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{AgentProfile, Catalog};

/// The bucket's profiles by name, with the revision that set them (`None`: deleted).
type Stored = BTreeMap<String, (u64, Option<AgentProfile>)>;

/// The live catalog; clones share one copy.
#[derive(Debug, Clone)]
pub struct LiveCatalog {
    base: Arc<Catalog>,
    /// The routes this process has.
    routes: Arc<BTreeSet<String>>,
    /// The MCP servers this process is configured with (their tools may be listed).
    mcp_servers: Arc<BTreeSet<String>>,
    /// The bucket's profiles by name, with the revision that set them (`None`: deleted),
    /// so an older value arriving late does not undo a newer one.
    stored: Arc<Mutex<Stored>>,
    current: watch::Sender<Arc<Catalog>>,
}

impl LiveCatalog {
    /// `base` with the bucket's profiles as they are now.
    /// A stored profile is checked against `routes` (this process's): one it cannot run
    /// is ignored, with a warning, and the configured agent of that name (if any) stays.
    pub async fn load(
        store: &kv::Store,
        base: Catalog,
        routes: BTreeSet<String>,
        mcp_servers: BTreeSet<String>,
    ) -> Result<Self, async_nats::Error> {
        let live = Self {
            current: watch::Sender::new(Arc::new(base.clone())),
            base: Arc::new(base),
            routes: Arc::new(routes),
            mcp_servers: Arc::new(mcp_servers),
            stored: Arc::default(),
        };
        let keys: Vec<String> = store.keys().await?.try_collect().await?;
        for key in keys {
            if let Some(entry) = store.entry(&key).await? {
                live.apply(&entry);
            }
        }
        Ok(live)
    }

    /// The agents and teams as they are now.
    pub fn current(&self) -> Arc<Catalog> {
        self.current.borrow().clone()
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.current.subscribe()
    }

    /// Whether the bucket holds a profile for `name`.
    pub fn stored(&self, name: &str) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|(_, profile)| profile.is_some())
    }

    /// Takes in one entry of the bucket (a put or a delete), unless a newer one is in.
    pub fn apply(&self, entry: &kv::Entry) {
        let profile = match entry.operation {
            kv::Operation::Put => self.usable(entry),
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let mut stored = self.lock();
        if stored
            .get(&entry.key)
            .is_some_and(|(revision, _)| *revision >= entry.revision)
        {
            return;
        }
        stored.insert(entry.key.clone(), (entry.revision, profile));
        let mut catalog = (*self.base).clone();
        for (name, (_, profile)) in stored.iter() {
            match profile {
                Some(profile) => {
                    catalog.agents.insert(name.clone(), profile.clone());
                }
                None => {
                    if let Some(configured) = self.base.agents.get(name) {
                        catalog.agents.insert(name.clone(), configured.clone());
                    }
                }
            }
        }
        self.current.send_replace(Arc::new(catalog));
    }

    /// Keeps the copy current until `shutdown`.
    pub async fn follow(self, store: kv::Store, shutdown: CancellationToken) {
        crate::nats::follow_bucket(&store, "agents", &shutdown, |entry| self.apply(&entry)).await;
    }

    /// The stored profile, if it decodes and passes its checks here.
    fn usable(&self, entry: &kv::Entry) -> Option<AgentProfile> {
        let mut profile = match serde_json::from_slice::<AgentProfile>(&entry.value) {
            Ok(profile) => profile,
            Err(e) => {
                warn!(agent = %entry.key, error = %e, "a stored agent profile does not decode; ignored");
                return None;
            }
        };
        profile.name.clone_from(&entry.key);
        let problems = profile.problems(|route| self.routes.contains(route), &|server| {
            self.mcp_servers.contains(server)
        });
        if let Some(problem) = problems.first() {
            warn!(agent = %entry.key, %problem, "a stored agent profile cannot run here; ignored");
            return None;
        }
        Some(profile)
    }

    /// The profile of `name` as configured, if it is.
    pub fn configured_profile(&self, name: &str) -> Option<&AgentProfile> {
        self.base.agents.get(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
