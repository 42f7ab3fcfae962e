"""Scenario 6: workflows. A caller's 5-step plan (a, b and c in parallel, then d, then e),
run by the shipped default team against the 0 ms fake provider, through the gateway's task
API: `POST /v1/tasks`, then `GET /v1/tasks/{id}/events` until `done`.

The workflow adds its own synthesis and review to every plan, so each run is seven steps
(seven provider calls), five of them one after another: {a, b, c} → d → e → @synthesis →
@review. The fake answers the reviewer's verdict schema with an approval (structured
outputs), so no revision round runs.

- Overhead: wall time from sending the POST to receiving the `done` event, minus the provider
  time on the critical path (each step's stored `upstream_ms`, the slowest of a, b and c).
  The SSE stream is opened right after the 202 and replays from the workflow's first event,
  so the end is seen when it is published, not at the next poll.
- Throughput: N callers in a closed loop, each starting a workflow and waiting for its
  `done`, for a fixed time; steps per second = 7 × workflows completed / elapsed.
"""

from __future__ import annotations

import http.client
import json
import resource
import threading
import time

# The shipped agents call the route `agents`: here, the same fake as every other scenario.
AGENTS_ROUTE = """
[routes.agents]
provider = "fake"
model = "bench-model"
"""

PLAN = [
    {"id": "a", "capability": "research", "instruction": "Collect the facts on question A."},
    {"id": "b", "capability": "research", "instruction": "Collect the facts on question B."},
    {"id": "c", "capability": "research", "instruction": "Collect the facts on question C."},
    {"id": "d", "capability": "analysis", "instruction": "Weigh A, B and C against each other.",
     "depends_on": ["a", "b", "c"]},
    {"id": "e", "capability": "writing", "instruction": "Write the recommendation.", "depends_on": ["d"]},
]
BODY = json.dumps({"goal": "Benchmark: answer questions A, B and C and recommend one.", "steps": PLAN})
# The steps one after another; a level's provider time is its slowest step's.
CRITICAL_PATH = [["a", "b", "c"], ["d"], ["e"], ["@synthesis"], ["@review"]]
STEPS_PER_WORKFLOW = 7


class Client:
    """One caller on its own keep-alive connection."""

    # The gateway closes a keep-alive connection idle for longer than this (or about).
    IDLE_S = 5.0

    def __init__(self, base: str):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.used = time.monotonic()

    def _fresh(self) -> None:
        """A new connection when the last one sat idle long enough to have been closed."""
        if time.monotonic() - self.used > self.IDLE_S:
            self.conn.close()
        self.used = time.monotonic()

    def _json(self, method: str, path: str, body: str | None = None) -> tuple[int, dict]:
        self._fresh()
        headers = {"content-type": "application/json"} if body else {}
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, json.loads(r.read() or b"null")

    def run(self) -> dict:
        """Starts one workflow and waits for its `done` event."""
        posted_ms = time.time() * 1000
        start = time.perf_counter()
        status, accepted = self._json("POST", "/v1/tasks", BODY)
        if status != 202:
            raise RuntimeError(f"POST /v1/tasks answered {status}: {accepted}")
        wf_id = accepted["id"]
        self._fresh()
        self.conn.request("GET", f"/v1/tasks/{wf_id}/events", headers={"accept": "text/event-stream"})
        r = self.conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"GET /v1/tasks/{wf_id}/events answered {r.status}: {r.read()!r}")
        kind, done, wall_ms = None, None, None
        for raw in r:  # the stream ends after `done`; reading on leaves the connection reusable
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "done" and done is None:
                wall_ms = (time.perf_counter() - start) * 1000
                done = json.loads(line[5:])
        self.used = time.monotonic()
        if done is None:
            raise RuntimeError(f"the events of {wf_id} ended without `done`")
        return {"id": wf_id, "wall_ms": wall_ms, "status": done.get("status"),
                "posted_ms": posted_ms, "done_ms": posted_ms + wall_ms}

    def anatomy(self, run: dict) -> dict:
        """The stored state and step results of a finished run: provider time on the critical
        path and where the rest of the time went, from the stored timestamps (whole ms)."""
        _, wf = self._json("GET", f"/v1/tasks/{run['id']}")
        steps = {s["id"]: s for s in wf["steps"]}
        if [s["id"] for s in wf["steps"]] != [p["id"] for p in PLAN] + ["@synthesis", "@review"]:
            raise RuntimeError(f"unexpected steps in {run['id']}: {list(steps)}")
        results = {}
        for sid, step in steps.items():
            _, result = self._json("GET", f"/v1/tasks/{step['task_id']}")
            attempt = result["attempts"][-1]
            results[sid] = {"upstream_ms": result["upstream_ms"], "started_ms": attempt["started_ms"],
                            "finished_ms": result["finished_ms"], "agent": step["agent"]}
        provider_ms = sum(max(results[s]["upstream_ms"] for s in level) for level in CRITICAL_PATH)
        # The step of each level that finished last is the one the next level waited for.
        path = [max(level, key=lambda s: results[s]["finished_ms"]) for level in CRITICAL_PATH]
        segments = {"POST → state stored by the gateway": wf["created_ms"] - run["posted_ms"],
                    "state stored → first provider call starts":
                        min(results[s]["started_ms"] for s in CRITICAL_PATH[0]) - wf["created_ms"]}
        for i, sid in enumerate(path):
            segments.setdefault("provider call + result stored, per step (×5)", 0)
            segments["provider call + result stored, per step (×5)"] += results[sid]["finished_ms"] - results[sid]["started_ms"]
            if i + 1 < len(path):
                nxt = min(results[s]["started_ms"] for s in CRITICAL_PATH[i + 1])
                segments.setdefault("result stored → next step's provider call starts (×4)", 0)
                segments["result stored → next step's provider call starts (×4)"] += nxt - results[sid]["finished_ms"]
        segments["last result stored → workflow state `completed`"] = wf["updated_ms"] - results["@review"]["finished_ms"]
        segments["state `completed` → caller has `done`"] = run["done_ms"] - wf["updated_ms"]
        return {"provider_ms": provider_ms, "status": wf["status"], "segments": segments,
                "agents": {sid: r["agent"] for sid, r in results.items()}}

    def close(self) -> None:
        self.conn.close()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def serial(base: str, n: int, warmup: int = 10) -> dict:
    """`n` workflows one after another; each one's wall time, provider time and anatomy."""
    client = Client(base)
    try:
        for _ in range(warmup):
            client.run()
        runs = []
        for _ in range(n):
            run = client.run()
            runs.append(run)
        anatomies = [client.anatomy(r) for r in runs]  # read afterwards, outside the timing
    finally:
        client.close()
    bad = [(r["id"], a["status"]) for r, a in zip(runs, anatomies) if a["status"] != "completed"]
    if bad:
        raise RuntimeError(f"workflows did not complete: {bad[:5]}")
    wall = [r["wall_ms"] for r in runs]
    provider = [a["provider_ms"] for a in anatomies]
    overhead = [w - p for w, p in zip(wall, provider)]
    names = list(anatomies[0]["segments"])
    return {
        "n": n,
        "wall_ms": wall,
        "provider_ms": provider,
        "overhead_ms": overhead,
        "p50": pct(overhead, 0.5),
        "p99": pct(overhead, 0.99),
        "wall_p50": pct(wall, 0.5),
        "wall_p99": pct(wall, 0.99),
        "segments_mean_ms": {k: sum(a["segments"][k] for a in anatomies) / n for k in names},
        "agents": anatomies[0]["agents"],
    }


def throughput(base: str, in_flight: int, seconds: float, procs: dict) -> dict:
    """`in_flight` callers in a closed loop for `seconds` (workflows in flight at the end
    finish and count); steps per second and the CPU each process spent per step."""
    clients = [Client(base) for _ in range(in_flight)]
    for c in clients[:4]:
        c.run()  # warm
    walls: list[float] = []
    failed: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(in_flight + 1)
    stop_at = [0.0]

    def loop(client: Client) -> None:
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            try:
                run = client.run()
            except (OSError, RuntimeError, http.client.HTTPException) as e:
                with lock:
                    errors.append(str(e))
                return
            with lock:
                (walls if run["status"] == "completed" else failed).append(
                    run["wall_ms"] if run["status"] == "completed" else run["id"])

    threads = [threading.Thread(target=loop, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    cpu_before = {name: p.cpu_seconds() for name, p in procs.items()}
    cpu_before["client"] = own_cpu()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start_gate.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    cpu = {name: p.cpu_seconds() - cpu_before[name] for name, p in procs.items()}
    cpu["client"] = own_cpu() - cpu_before["client"]  # this load generator, on the same cores
    for c in clients:
        c.close()
    steps = STEPS_PER_WORKFLOW * len(walls)
    return {
        "in_flight": in_flight,
        "duration_s": seconds,
        "seconds": elapsed,
        "workflows": len(walls),
        "failed": len(failed),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "steps_per_s": steps / elapsed,
        "workflows_per_s": len(walls) / elapsed,
        "wall_p50": pct(walls, 0.5) if walls else None,
        "wall_p99": pct(walls, 0.99) if walls else None,
        "cpu_s": cpu,
        "cpu_us_per_step": {name: s * 1e6 / max(steps, 1) for name, s in cpu.items()},
    }
