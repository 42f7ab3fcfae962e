#!/usr/bin/env python3
"""Switchyard's benchmark: every component on this machine, as on a user's laptop.

Starts a real nats-server, the fake provider as its own process, and Switchyard's gateway and
workers as processes, drives them with oha (and a small Python client for time to first
token), runs the same load against the fake provider directly and against LiteLLM's proxy
configured offline against the same fake, and writes docs/benchmarks.md and
docs/benchmarks.svg. Run it through bench/run.sh, which builds and installs what it needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where cargo put the release build (bench/run.sh builds it there).
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
SWITCHYARD = TARGET / "release" / "switchyard"
FAKE = TARGET / "release" / "switchyard-fake-provider"
LITELLM = ROOT / "bench" / ".venv-litellm" / "bin" / "litellm"
LITELLM_KEY = "sk-bench-local-master-key"
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    """A child process in its own process group, stopped with SIGTERM (then SIGKILL)."""

    name: str
    popen: subprocess.Popen

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str] | None, logdir: Path) -> "Proc":
        out = open(logdir / f"{name}.log", "wb")
        popen = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, popen)

    def peak_rss_mb(self) -> float:
        """Peak resident set size so far (VmHWM), in MB."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, 15)
            self.popen.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.popen.pid, 9)
            self.popen.wait()


def wait_http(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready")
        time.sleep(0.1)


def wait_tcp(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.05)


def chat_ok(base: str, headers: dict[str, str]) -> None:
    """One completion must succeed before measuring: a broken setup is an error, not a number."""
    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=BODY.encode(),
        headers={"content-type": "application/json", **headers},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.load(r)
        assert body["choices"][0]["message"]["content"], body


@dataclass
class Load:
    """One oha run's numbers; latencies in ms."""

    rps: float
    p50: float
    p90: float
    p99: float
    p999: float
    ok: int
    errors: int
    raw: dict = field(repr=False)


def oha(base: str, headers: dict[str, str], *, n: int | None = None, seconds: int | None = None,
        c: int = 1, rate: int | None = None) -> Load:
    cmd = ["oha", "--no-tui", "--output-format", "json", "-m", "POST",
           "-H", "content-type: application/json", "-d", BODY, "-c", str(c)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if n is not None:
        cmd += ["-n", str(n)]
    if seconds is not None:
        # -w: requests in flight at the end finish and count, instead of being dropped (which
        # would both hide their latency and inflate the rate of short runs).
        cmd += ["-z", f"{seconds}s", "-w"]
    if rate is not None:
        # Open loop: requests are due at a fixed rate, and latency counts from when a request
        # was due, not when a free connection sent it (no coordinated omission).
        cmd += ["-q", str(rate), "--latency-correction"]
    cmd.append(f"{base}/v1/chat/completions")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    codes = data.get("statusCodeDistribution", {})
    ok = int(codes.get("200", 0))
    errors = sum(int(v) for k, v in codes.items() if k != "200") + sum(
        int(v) for v in data.get("errorDistribution", {}).values())
    ms = lambda key: (pct.get(key) or float("nan")) * 1000  # noqa: E731
    return Load(rps=data["summary"]["requestsPerSec"], p50=ms("p50"), p90=ms("p90"), p99=ms("p99"),
                p999=ms("p99.9"), ok=ok, errors=errors, raw=data)


def ttft(base: str, headers: dict[str, str], n: int) -> list[float]:
    """Serial streaming requests; ms from sending to the first chunk with text."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({**json.loads(BODY), "stream": True})
    out = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"content-type": "application/json", **headers})
        r = conn.getresponse()
        first = None
        for raw in r:
            line = raw.decode().strip()
            if first is None and line.startswith("data:") and line != "data: [DONE]":
                chunk = json.loads(line[5:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices", [])):
                    first = (time.perf_counter() - start) * 1000
        assert first is not None and r.status == 200, "a streamed answer without text"
        out.append(first)
    conn.close()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Stack:
    """nats-server, the fake provider, a Switchyard gateway and N worker processes."""

    def __init__(self, logdir: Path, workers: int = 1, concurrency: int = 256, latency_ms: int = 0,
                 extra_config: str = "", replicas: int = 1):
        """`replicas = 3` runs a 3-node cluster from the shipped `nats/cluster.conf` (every
        stream and bucket on all three) instead of one nats-server."""
        self.logdir = logdir
        self.dir = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
        self.nats_port, self.fake_port, self.http_port = free_port(), free_port(), free_port()
        (self.dir / "nats.conf").write_text(
            f'listen: "127.0.0.1:{self.nats_port}"\nmax_payload: 8MB\n'
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n')
        node_ports = [self.nats_port] + [free_port() for _ in range(replicas - 1)]
        nats_url = ",".join(f"nats://127.0.0.1:{port}" for port in node_ports)
        (self.dir / "switchyard.toml").write_text(f"""
[nats]
url = "{nats_url}"
replicas = {replicas}
[gateway]
listen = "127.0.0.1:{self.http_port}"
[worker]
concurrency = {concurrency}
[capabilities.chat]
max_in_flight = 4096
[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:{self.fake_port}/v1"
[routes.bench]
provider = "fake"
model = "bench-model"
{extra_config}""")
        self.procs: list[Proc] = []
        try:
            env = {**os.environ, "RUST_LOG": "warn"}
            # As `switchyard up` runs its local nats-server (src/local_nats.rs): on half the
            # cores, unless GOMAXPROCS is set, since it shares them with everything else here.
            nats_env = {"GOMAXPROCS": str(max(1, len(os.sched_getaffinity(0)) // 2)), **env}
            if replicas == 1:
                self.nats_nodes = [self._start("nats", ["nats-server", "-c", str(self.dir / "nats.conf")], nats_env)]
            else:
                self.nats_nodes = self._cluster(node_ports, nats_env)
            self.nats = self.nats_nodes[0]
            self.fake = self._start("fake", [str(FAKE), "--listen", f"127.0.0.1:{self.fake_port}",
                                              "--latency-ms", str(latency_ms)], env)
            cfg = ["--config", str(self.dir / "switchyard.toml")]
            for port in node_ports:
                wait_tcp(port)
            wait_tcp(self.fake_port)
            subprocess.run([str(SWITCHYARD), *cfg, "provision"], check=True, env=env, capture_output=True)
            self.gateway = self._start("gateway", [str(SWITCHYARD), *cfg, "gateway"], env)
            self.workers = [self._start(f"worker{i}", [str(SWITCHYARD), *cfg, "worker"], env) for i in range(workers)]
            self.base = f"http://127.0.0.1:{self.http_port}"
            self.direct = f"http://127.0.0.1:{self.fake_port}"
            wait_http(f"{self.base}/readyz")
            chat_ok(self.base, {})
            for _ in range(50):  # warm connections and pools
                chat_ok(self.base, {})
        except BaseException:
            self.stop()  # a stack that failed to start leaves no process behind
            raise

    def _cluster(self, client_ports: list[int], env: dict[str, str]) -> list[Proc]:
        """The nodes of a cluster on loopback, each running `nats/cluster.conf` with its own
        environment (the variables its header lists)."""
        route_ports = [free_port() for _ in client_ports]
        password = "benchroutes"
        routes = ", ".join(f"nats-route://route:{password}@127.0.0.1:{p}" for p in route_ports)
        nodes = []
        for i, (client, route) in enumerate(zip(client_ports, route_ports)):
            node_env = {**env, "NATS_SERVER_NAME": f"bench-{i}", "NATS_PORT": str(client),
                        "NATS_HTTP_PORT": str(free_port()), "NATS_CLUSTER_PORT": str(route),
                        "NATS_STORE_DIR": str(self.dir / f"js-{i}"), "NATS_CLUSTER_USER": "route",
                        "NATS_CLUSTER_PASSWORD": password, "NATS_ROUTES": f"[{routes}]"}
            nodes.append(self._start(f"nats-{i}", ["nats-server", "-c", str(ROOT / "nats" / "cluster.conf")],
                                     node_env))
        return nodes

    def _start(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        proc = Proc.start(name, cmd, env, self.logdir)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        # In the reverse of the order they started: Switchyard first, so it drains against a
        # live NATS.
        for proc in reversed(self.procs):
            proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class LiteLlm:
    """LiteLLM's proxy, offline, against its own fake provider on loopback."""

    def __init__(self, logdir: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="litellm-bench-"))
        self.fake_port, self.port = free_port(), free_port()
        (self.dir / "config.yaml").write_text(f"""
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{self.fake_port}/v1
      api_key: sk-fake-upstream
general_settings:
  master_key: {LITELLM_KEY}
litellm_settings:
  telemetry: false
""")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "NO_PROXY": "*", "HTTP_PROXY": "", "HTTPS_PROXY": ""}
        self.fake = Proc.start("litellm-fake", [str(FAKE), "--listen", f"127.0.0.1:{self.fake_port}"], env, logdir)
        self.proxy = Proc.start("litellm", [str(LITELLM), "--config", str(self.dir / "config.yaml"),
                                            "--host", "127.0.0.1", "--port", str(self.port)], env, logdir)
        self.base = f"http://127.0.0.1:{self.port}"
        self.headers = {"authorization": f"Bearer {LITELLM_KEY}"}
        wait_http(f"{self.base}/health/liveliness", timeout=180)
        for _ in range(50):
            chat_ok(self.base, self.headers)

    def stop(self) -> None:
        self.proxy.stop()
        self.fake.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not available"


def litellm_version() -> str:
    if not LITELLM.exists():
        return "not installed"
    out = subprocess.run([str(LITELLM.parent / "pip"), "show", "litellm"], capture_output=True, text=True)
    return next((l.split(":", 1)[1].strip() for l in out.stdout.splitlines() if l.startswith("Version:")), "unknown")


def machine(commit: str = "") -> dict[str, str]:
    """Facts about this machine and the versions measured; `commit` names the build when it is
    not this checkout's."""
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next(l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit or "HEAD"],
                         capture_output=True, text=True)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{int(mem) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "switchyard": f"{version([str(SWITCHYARD), '--version'])} ({git.stdout.strip() or 'unknown commit'}, release build)",
        "nats-server": version(["nats-server", "--version"]),
        "oha": version(["oha", "--version"]),
        "rustc": version(["rustc", "--version"]),
        "python": platform.python_version(),
        "litellm": litellm_version(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short runs, to check the harness (numbers are rough)")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM side by side")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers to run (default: all); "
                    "the other scenarios keep their numbers from bench/results.json")
    ap.add_argument("--before", metavar="COMMIT", default="",
                    help="record a build of COMMIT from before a change (CARGO_TARGET_DIR=<its target dir>) "
                    "in bench/before.json, shown beside the current numbers in the targets table; "
                    "its nats-server runs on every core, as `switchyard up` ran it before 27859b4")
    args = ap.parse_args()
    if args.before:
        if "CARGO_TARGET_DIR" not in os.environ:
            ap.error("--before measures the build in $CARGO_TARGET_DIR: set it to that build's target dir")
        # Builds before 27859b4 ran their local nats-server on every core.
        os.environ.setdefault("GOMAXPROCS", str(len(os.sched_getaffinity(0))))
    quick = args.quick
    only = {int(x) for x in args.only.split(",") if x}
    want = lambda n: not only or n in only  # noqa: E731
    logdir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    log(f"process logs in {logdir}")
    serial_n = 300 if quick else 2000
    fixed_secs = 10 if quick else 60
    max_secs = 5 if quick else 20
    results: dict = {"machine": machine(args.before), "quick": quick, "scenarios": {}}
    res = results["scenarios"]

    if want(1) or want(2) or want(4):
        stack = Stack(logdir)
        try:
            if want(1):
                log("1. serial overhead")
                res["serial"] = {
                    "direct": oha(stack.direct, {}, n=serial_n, c=1).__dict__,
                    "switchyard": oha(stack.base, {}, n=serial_n, c=1).__dict__,
                }
            if want(2):
                log("2. fixed rate 1000/s")
                res["fixed"] = {
                    "direct": oha(stack.direct, {}, seconds=fixed_secs, c=256, rate=1000).__dict__,
                    "switchyard": oha(stack.base, {}, seconds=fixed_secs, c=256, rate=1000).__dict__,
                }
            if want(4):
                log("4. time to first token")
                n = 200 if quick else 1000
                res["ttft"] = {"direct": ttft(stack.direct, {}, n), "switchyard": ttft(stack.base, {}, n)}
        finally:
            stack.stop()

    if want(3) or want(7):
        # Fresh processes, so their peak RSS is this scenario's.
        stack = Stack(logdir)
        try:
            log("3. maximum throughput")
            res["max"] = {}
            res["cpu_us_per_request"] = {}
            procs = {"gateway": stack.gateway, "worker": stack.workers[0], "nats-server": stack.nats}
            for c in (64, 256):
                direct = oha(stack.direct, {}, seconds=max_secs, c=c).__dict__
                before = {name: p.cpu_seconds() for name, p in procs.items()}
                through = oha(stack.base, {}, seconds=max_secs, c=c).__dict__
                res["cpu_us_per_request"][str(c)] = {
                    name: (p.cpu_seconds() - before[name]) * 1e6 / max(through["ok"], 1)
                    for name, p in procs.items()
                }
                res["max"][str(c)] = {"direct": direct, "switchyard": through}
            res["rss_mb"] = {"gateway": stack.gateway.peak_rss_mb(), "worker": stack.workers[0].peak_rss_mb(),
                             "nats-server": stack.nats.peak_rss_mb()}
        finally:
            stack.stop()

    if want(9):
        log("9. maximum throughput on a 3-node cluster (replicas 3)")
        stack = Stack(logdir, replicas=3)
        try:
            res["replicas3"] = {"max": {}, "cpu_us_per_request": {}}
            procs = {"gateway": stack.gateway, "worker": stack.workers[0]}
            for c in (64, 256):
                before = {name: p.cpu_seconds() for name, p in procs.items()}
                nats_before = sum(n.cpu_seconds() for n in stack.nats_nodes)
                through = oha(stack.base, {}, seconds=max_secs, c=c).__dict__
                done = max(through["ok"], 1)
                cpu = {name: (p.cpu_seconds() - before[name]) * 1e6 / done for name, p in procs.items()}
                cpu["nats-server"] = (sum(n.cpu_seconds() for n in stack.nats_nodes) - nats_before) * 1e6 / done
                res["replicas3"]["cpu_us_per_request"][str(c)] = cpu
                res["replicas3"]["max"][str(c)] = through
        finally:
            stack.stop()

    if want(5):
        log("5. scale-out")
        res["scale"] = {}
        for workers in (1, 2, 4):
            stack = Stack(logdir, workers=workers, concurrency=16, latency_ms=200)
            try:
                res["scale"][str(workers)] = oha(stack.base, {}, seconds=max_secs, c=256).__dict__
            finally:
                stack.stop()

    if want(6):
        import workflows  # noqa: E402  (bench/workflows.py, beside this file)
        log("6. workflows: overhead (serial) and throughput")
        stack = Stack(logdir, extra_config=workflows.AGENTS_ROUTE)
        try:
            procs = {"gateway": stack.gateway, "worker": stack.workers[0], "nats-server": stack.nats,
                     "fake": stack.fake}
            # The machine may be shared: what else ran shows in the load average.
            load = os.getloadavg()
            serial_run = workflows.serial(stack.base, 30 if quick else 100)
            runs = [workflows.throughput(stack.base, c, 10 if quick else 30, procs)
                    for c in ((32,) if quick else (32, 64))]
            res["workflow"] = {"serial": serial_run, "throughput": {str(r["in_flight"]): r for r in runs},
                               "quick": quick, "date": results["machine"]["date"], "load_avg": load,
                               "commit": results["machine"]["switchyard"]}
        finally:
            stack.stop()

    if want(8) and not args.no_litellm and LITELLM.exists():
        log("8. LiteLLM side by side")
        lite = LiteLlm(logdir)
        try:
            # The open-loop run goes last: a proxy that falls behind keeps working off its
            # backlog after the run ends, which would slow whatever ran next.
            res["litellm"] = {
                "serial": oha(lite.base, lite.headers, n=serial_n, c=1).__dict__,
                "max": {str(c): oha(lite.base, lite.headers, seconds=max_secs, c=c).__dict__ for c in (64, 256)},
            }
            res["litellm"]["rss_mb"] = lite.proxy.peak_rss_mb()
            res["litellm"]["fixed"] = oha(lite.base, lite.headers, seconds=fixed_secs, c=256, rate=1000).__dict__
        finally:
            lite.stop()

    for scenario in res.values():
        strip_raw(scenario)
    out = ROOT / "bench" / ("before.json" if args.before else "results.json")
    stamp = f"{results['machine']['date']}, {results['machine']['switchyard']}"
    results["measured"] = {name: stamp for name in res}
    if only and out.exists():
        # A partial run updates its scenarios and keeps the others' last numbers, each with
        # when and on which build it was measured.
        earlier = json.loads(out.read_text())
        measured = earlier.get("measured") or {name: f"{earlier['machine']['date']}, {earlier['machine']['switchyard']}"
                                               for name in earlier["scenarios"]}
        measured.update(results["measured"])
        earlier["scenarios"].update(res)
        results.update(scenarios=earlier["scenarios"], measured=measured)
    out.write_text(json.dumps(results, indent=2))
    log(f"raw numbers in {out}")
    current = ROOT / "bench" / "results.json"
    if current.exists():
        import report  # noqa: E402  (bench/report.py, beside this file)
        report.write(json.loads(current.read_text()))


def strip_raw(value) -> None:
    """Drops oha's full JSON (histograms) before saving."""
    if isinstance(value, dict):
        value.pop("raw", None)
        for v in value.values():
            strip_raw(v)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
