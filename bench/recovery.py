#!/usr/bin/env python3
"""Recovery after a NATS restart: how long after nats-server accepts connections again until
the gateway answers a completion again (gateway and worker reconnect, JetStream is back).

Each round: stop nats-server (SIGTERM), wait OUTAGE seconds, start it on the same port and
store, then send a completion every 10 ms (each with a 2 s client timeout) until one answers
200. Reports the time from "port accepts" to that answer. Uses bench.py's stack (nats-server,
fake provider, one gateway and one worker as processes).

    python3 bench/recovery.py [--binary target/debug/switchyard] [--rounds 5] [--outage 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def answered(base: str) -> bool:
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=bench.BODY.encode(),
                                 headers={"content-type": "application/json", "x-switchyard-timeout-ms": "2000"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(bench.SWITCHYARD))
    parser.add_argument("--fake", default=str(bench.FAKE))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--outage", type=float, default=3.0)
    args = parser.parse_args()
    bench.SWITCHYARD, bench.FAKE = Path(args.binary), Path(args.fake)
    logdir = Path(tempfile.mkdtemp(prefix="switchyard-recovery-"))
    stack = bench.Stack(logdir)
    env = {"RUST_LOG": "warn", "PATH": __import__("os").environ["PATH"]}
    times = []
    try:
        for i in range(args.rounds):
            stack.nats.stop()
            time.sleep(args.outage)
            stack.nats = bench.Proc.start(f"nats{i}", ["nats-server", "-c", str(stack.dir / "nats.conf")], env, logdir)
            bench.wait_tcp(stack.nats_port, timeout=30)
            back = time.monotonic()
            while not answered(stack.base):
                time.sleep(0.01)
            times.append(time.monotonic() - back)
            print(f"round {i + 1}: answered {times[-1] * 1000:.0f} ms after nats-server accepted connections")
    finally:
        stack.stop()
    print(f"recovery after a {args.outage:g} s outage, {args.rounds} rounds: "
          f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
