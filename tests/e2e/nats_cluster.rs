//! A 3-node JetStream cluster on loopback, started from the shipped `nats/cluster.conf`: each
//! node gets its name, ports, store and the route URLs (with the route credentials) through
//! its environment, as a deployment would. Nodes are SIGKILLed and restarted by index; the
//! leader of a stream (`TASKS`, `KV_results`) is found through the JetStream API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use tempfile::TempDir;

use crate::harness::{eventually, nats_server_binary};

/// The user and password the nodes' routes authenticate with.
const ROUTE_USER: &str = "route";
const ROUTE_PASSWORD: &str = "route-pass-0123";
/// How long a cluster (or a restarted node) may take to be whole again.
const FORMING: Duration = Duration::from_secs(30);

/// One node: its ports and store stay the same across restarts.
pub struct Node {
    /// Its `server_name`, as stream infos name leaders.
    pub name: String,
    pub port: u16,
    http_port: u16,
    cluster_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

pub struct NatsCluster {
    pub nodes: Vec<Node>,
    /// Every node's client URL, comma-separated (`nats.url`).
    pub url: String,
    routes: String,
    _dir: TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until they form a cluster with JetStream.
    pub async fn start() -> Self {
        let cluster = Self::new();
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i);
        }
        cluster.healthy().await;
        cluster
    }

    /// Three nodes on free loopback ports, none started yet.
    pub fn new() -> Self {
        let dir = TempDir::new().unwrap();
        // Hold every listener until all ports are chosen, so no two nodes get the same one.
        let listeners: Vec<std::net::TcpListener> = (0..9)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let nodes: Vec<Node> = ["a", "b", "c"]
            .iter()
            .zip(ports.chunks(3))
            .map(|(letter, ports)| Node {
                name: format!("switchyard-{letter}"),
                port: ports[0],
                http_port: ports[1],
                cluster_port: ports[2],
                store: dir.path().join(format!("store-{letter}")),
                log: dir.path().join(format!("nats-{letter}.log")),
                child: Mutex::new(None),
            })
            .collect();
        let routes = nodes
            .iter()
            .map(|n| {
                format!(
                    "nats-route://{ROUTE_USER}:{ROUTE_PASSWORD}@127.0.0.1:{}",
                    n.cluster_port
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let url = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            nodes,
            url,
            routes: format!("[{routes}]"),
            _dir: dir,
        }
    }

    /// Starts node `i` (again) from `nats/cluster.conf`, on its ports with its store.
    pub fn start_node(&self, i: usize) {
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("nats/cluster.conf");
        let node = &self.nodes[i];
        let mut running = node.child.lock().unwrap();
        assert!(running.is_none(), "{} is running", node.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(nats_server_binary())
            .arg("-c")
            .arg(conf)
            .env("NATS_SERVER_NAME", &node.name)
            .env("NATS_PORT", node.port.to_string())
            .env("NATS_HTTP_PORT", node.http_port.to_string())
            .env("NATS_CLUSTER_PORT", node.cluster_port.to_string())
            .env("NATS_STORE_DIR", &node.store)
            .env("NATS_CLUSTER_USER", ROUTE_USER)
            .env("NATS_CLUSTER_PASSWORD", ROUTE_PASSWORD)
            .env("NATS_ROUTES", &self.routes)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        *running = Some(child);
    }

    /// Waits until node `i` accepts client connections.
    pub async fn accepting(&self, i: usize) {
        let addr = format!("127.0.0.1:{}", self.nodes[i].port);
        eventually(FORMING, || async {
            tokio::net::TcpStream::connect(&addr).await.ok().map(drop)
        })
        .await;
    }

    /// SIGKILLs node `i`: no goodbye to its routes or clients, no flush of its store.
    pub fn kill(&self, i: usize) {
        let mut child = self.nodes[i].child.lock().unwrap().take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits until every running node says it is healthy: JetStream on, the meta leader
    /// known and its streams and consumers current (nats-server's `/healthz`).
    pub async fn healthy(&self) {
        let http = reqwest::Client::new();
        let running = self
            .nodes
            .iter()
            .filter(|n| n.child.lock().unwrap().is_some());
        for node in running {
            let url = format!("http://127.0.0.1:{}/healthz", node.http_port);
            eventually(FORMING, || async {
                let r = http.get(&url).send().await.ok()?;
                (r.status() == 200).then_some(())
            })
            .await;
        }
    }

    /// The index of the node leading `stream` (e.g. `TASKS`, `KV_results`), once it has a
    /// leader and every replica is current.
    pub async fn leader_of(&self, client: &async_nats::Client, stream: &str) -> usize {
        let js = async_nats::jetstream::new(client.clone());
        eventually(FORMING, || async {
            let mut stream = js.get_stream(stream).await.ok()?;
            let cluster = stream.info().await.ok()?.cluster.clone()?;
            let leader = cluster.leader?;
            let whole = cluster.replicas.len() == 2 && cluster.replicas.iter().all(|r| r.current);
            self.nodes
                .iter()
                .position(|n| n.name == leader)
                .filter(|_| whole)
        })
        .await
    }

    /// Moves the leadership of `stream` (or of its `consumer`) to node `i`, asking the
    /// leader to step down in its favour (nats-server 2.11+) until it has.
    pub async fn lead(
        &self,
        client: &async_nats::Client,
        stream: &str,
        consumer: Option<&str>,
        i: usize,
    ) {
        let js = async_nats::jetstream::new(client.clone());
        let name = &self.nodes[i].name;
        let subject = match consumer {
            Some(c) => format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{c}"),
            None => format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
        };
        let body = serde_json::json!({"placement": {"preferred": name}}).to_string();
        eventually(FORMING, || async {
            let cluster = match consumer {
                Some(c) => {
                    let stream = js.get_stream(stream).await.ok()?;
                    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                        stream.get_consumer(c).await.ok()?;
                    consumer.info().await.ok()?.cluster.clone()?
                }
                None => js
                    .get_stream(stream)
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .cluster
                    .clone()?,
            };
            if cluster.leader.as_deref() == Some(name.as_str())
                && cluster.replicas.iter().all(|r| r.current)
            {
                return Some(());
            }
            // Led by another node: ask it to step down. Led by `i` already, with a replica
            // catching up: wait for it rather than start another election.
            if cluster.leader.is_some() && cluster.leader.as_deref() != Some(name.as_str()) {
                let _ = client.request(subject.clone(), body.clone().into()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        })
        .await;
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
