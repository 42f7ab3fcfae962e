#!/usr/bin/env python3
"""Where a serial request's time goes, hop by hop, from kernel tracepoints: on a fresh stack of
the release build in $CARGO_TARGET_DIR (default `target`), `perf record` takes every process's
write syscalls and `epoll_wait` returns while oha sends serial requests, and each request is
cut into the hops it crosses (medians and p90s in ms):

    python3 bench/hops.py [requests]           # default 500; needs perf and root
    python3 bench/hops.py --stream [requests]  # streamed requests, up to the first event

The chain of one request: oha writes it; the gateway wakes and publishes the task; nats-server
stores it and delivers it (the worker wakes); the worker calls the provider (the fake writes
its answer); the worker stores the result; nats-server republishes it (the gateway wakes); the
gateway writes the response; oha wakes. With `--stream`, the requests are streamed (from this
script, as scenario 4 sends them), and the chain ends when the gateway writes its response's
head and first event: the worker relays the provider's first chunk over core NATS instead of
storing a result. Times are taken where a process wakes (`epoll_wait`
returns) or writes, so each hop is one process's work plus the kernel's hand-over to the
next. Run it on a quiet machine: it reads the gaps between processes, not CPU.
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left, bisect_right
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

WRITES = ["write", "writev", "sendto", "sendmsg"]
WAKES = ["epoll_wait", "epoll_pwait"]
EVENTS = [f"syscalls:sys_enter_{name}" for name in WRITES] + [f"syscalls:sys_exit_{name}" for name in WAKES]
LINE = re.compile(r"^\s*\S+\s+(\d+)/\d+\s+\[\d+\]\s+([\d.]+):\s+syscalls:sys_(enter|exit)_(\w+):")


def trace(n: int, stream: bool) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int]]:
    """Runs `n` serial requests under perf; returns each process's write and wake times (s)."""
    logdir = Path(tempfile.mkdtemp(prefix="switchyard-hops-"))
    stack = bench.Stack(logdir)
    data = logdir / "perf.data"
    try:
        pids = {"gateway": stack.gateway.popen.pid, "worker": stack.workers[0].popen.pid,
                "nats": stack.nats.popen.pid, "fake": stack.fake.popen.pid}
        body = '{"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark."}]}'
        oha = ["oha", "--no-tui", "-m", "POST", "-H", "content-type: application/json", "-d", body,
               "-c", "1", "-n", str(n), f"{stack.base}/v1/chat/completions"]
        events = ",".join(EVENTS)
        perf = subprocess.Popen(["perf", "record", "-q", "-a", "-e", events, "-o", str(data)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # perf takes a moment to start recording
        if stream:
            pids["oha"] = os.getpid()
            bench.ttft(stack.base, {}, n)
        else:
            client = subprocess.Popen(oha, stdout=subprocess.DEVNULL)
            pids["oha"] = client.pid
            client.wait()
        perf.send_signal(2)
        perf.wait()
    finally:
        stack.stop()
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,tid,cpu,time,event"],
                            capture_output=True, text=True, check=True).stdout
    names = {pid: name for name, pid in pids.items()}
    writes: dict[str, list[float]] = {name: [] for name in pids}
    wakes: dict[str, list[float]] = {name: [] for name in pids}
    for line in script.splitlines():
        m = LINE.match(line)
        if not m or int(m[1]) not in names:
            continue
        (writes if m[3] == "enter" else wakes)[names[int(m[1])]].append(float(m[2]))
    return writes, wakes, pids


def last_before(times: list[float], t: float, after: float) -> float | None:
    i = bisect_left(times, t) - 1
    return times[i] if i >= 0 and times[i] > after else None


def first_after(times: list[float], t: float) -> float | None:
    i = bisect_right(times, t)
    return times[i] if i < len(times) else None


def hops(writes: dict[str, list[float]], wakes: dict[str, list[float]], stream: bool) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    starts = writes["oha"]
    for start, end in zip(starts, starts[1:]):
        g_pub = first_after(writes["gateway"], start)
        fake = first_after(writes["fake"], g_pub or end)
        if not g_pub or not fake or fake > end:
            continue
        w_call = last_before(writes["worker"], fake, g_pub)
        w_wake = w_call and last_before(wakes["worker"], w_call, g_pub)
        w_store = first_after(writes["worker"], fake)
        g_reply = w_store and first_after(writes["gateway"], w_store)
        g_wake = g_reply and last_before(wakes["gateway"], g_reply, w_store)
        # A streaming client blocks in a read rather than in `epoll_wait`: its wake is not taken.
        o_wake = g_reply if stream else g_reply and first_after(wakes["oha"], g_reply)
        if not all([w_call, w_wake, w_store, g_reply, g_wake, o_wake]) or o_wake > end:
            continue
        # The labels the last hops get: a streamed request ends at its first event, relayed
        # over core NATS; a plain one at its stored result, republished.
        last = [
            ("worker: woken, first chunk read and relayed", fake, w_store),
            ("nats-server: chunk relayed, gateway woken", w_store, g_wake),
            ("gateway: response head and first event written", g_wake, g_reply),
            ("whole request, to the first event", start, g_reply),
        ] if stream else [
            ("worker: woken, answer read, result stored", fake, w_store),
            ("nats-server: result stored and republished, gateway woken", w_store, g_wake),
            ("gateway: response written", g_wake, g_reply),
            ("oha woken", g_reply, o_wake),
            ("whole request", start, o_wake),
        ]
        chain = [
            ("gateway: request read, task published", start, g_pub),
            ("nats-server: task stored and delivered, worker woken", g_pub, w_wake),
            ("worker: task taken, provider call written", w_wake, w_call),
            (f"fake provider: woken, {'first chunk' if stream else 'answer'} written", w_call, fake),
            *last,
        ]
        for label, a, b in chain:
            out.setdefault(label, []).append((b - a) * 1e3)
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--stream"]
    stream = "--stream" in sys.argv
    n = int(args[0]) if args else 500
    nats = subprocess.run([str(bench.SWITCHYARD), "nats-server"], capture_output=True, text=True,
                          check=True).stdout.strip()
    os.environ["PATH"] = f"{os.path.dirname(nats)}:{os.environ['PATH']}"
    writes, wakes, _ = trace(n, stream)
    table = hops(writes, wakes, stream)
    whole = table.get("whole request, to the first event" if stream else "whole request", [])
    print(f"{len(whole)} of {n} requests cut into hops (ms)")
    print("| hop | p50 | p90 |")
    print("|---|---|---|")
    if len(whole) < 2:
        sys.exit("too few requests were cut into hops to say anything; is perf allowed to trace?")
    for label, values in table.items():
        q = statistics.quantiles(values, n=10)
        print(f"| {label} | {statistics.median(values):.3f} | {q[8]:.3f} |")


if __name__ == "__main__":
    main()
