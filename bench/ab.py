#!/usr/bin/env python3
"""One side of a before/after comparison of the chat path, on a fresh stack of the release
build in $CARGO_TARGET_DIR (default `target`): 10 s at a fixed 1,000 req/s (with CPU per request), 2,000 serial
requests, then 10 s at concurrency 64 with each process's CPU time and write syscalls per
request (from /proc). Run it for each build in turn, alternating, on the same machine:

    CARGO_TARGET_DIR=/path/to/before python3 bench/ab.py before
    python3 bench/ab.py after

With `--workflows`, the side is scenario 6's instead: 50 serial workflows (overhead p50 and
p99), then 15 s with 32 in flight (steps/s and CPU per step).

Shorter than bench/run.sh and without its report: a check of one change, whose figures go in
bench/notes.md.
"""

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def writes(proc: bench.Proc) -> int:
    fields = dict(line.split(": ") for line in Path(f"/proc/{proc.popen.pid}/io").read_text().splitlines())
    return int(fields["syscw"])


def workflows(label: str, logdir: Path) -> None:
    import workflows as wf  # noqa: E402  (bench/workflows.py)
    stack = bench.Stack(logdir, extra_config=wf.AGENTS_ROUTE)
    try:
        serial = wf.serial(stack.base, 50)
        procs = {"gateway": stack.gateway, "worker": stack.workers[0], "nats-server": stack.nats}
        run = wf.throughput(stack.base, 32, 15, procs)
        cpu = run["cpu_us_per_step"]
        print(f"{label}: serial workflow overhead p50 {serial['p50']:.1f} p99 {serial['p99']:.1f} ms")
        print(f"{label}: 32 in flight: {run['steps_per_s']:.0f} steps/s, CPU per step (µs): "
              + ", ".join(f"{k} {cpu[k]:.0f}" for k in procs) + f", sum {sum(cpu[k] for k in procs):.0f}")
    finally:
        stack.stop()


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--workflows"]
    label = args[0] if args else "run"
    nats = subprocess.run([str(bench.SWITCHYARD), "nats-server"], capture_output=True, text=True,
                          check=True).stdout.strip()
    os.environ["PATH"] = f"{os.path.dirname(nats)}:{os.environ['PATH']}"
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / "switchyard-ab-logs"
    logdir.mkdir(exist_ok=True)
    if "--workflows" in sys.argv:
        workflows(label, logdir)
        return
    stack = bench.Stack(logdir)
    try:
        procs = {"gateway": stack.gateway, "worker": stack.workers[0], "nats-server": stack.nats}
        fixed_cpu0 = {k: p.cpu_seconds() for k, p in procs.items()}
        fixed = bench.oha(stack.base, {}, seconds=10, c=256, rate=1000)
        fixed_cpu = {k: (p.cpu_seconds() - fixed_cpu0[k]) / max(fixed.ok, 1) * 1e6 for k, p in procs.items()}
        serial = bench.oha(stack.base, {}, n=2000, c=1)
        cpu0 = {k: p.cpu_seconds() for k, p in procs.items()}
        w0 = {k: writes(p) for k, p in procs.items()}
        load = bench.oha(stack.base, {}, seconds=10, c=64)
        n = load.ok
        cpu = {k: (p.cpu_seconds() - cpu0[k]) / n * 1e6 for k, p in procs.items()}
        w = {k: (writes(p) - w0[k]) / n for k, p in procs.items()}
        print(f"{label}: 1,000 req/s p50 {fixed.p50:.2f} p99 {fixed.p99:.2f} ms, errors {fixed.errors}, "
              "CPU per request (µs): " + ", ".join(f"{k} {v:.0f}" for k, v in fixed_cpu.items())
              + f", sum {sum(fixed_cpu.values()):.0f}")
        print(f"{label}: serial p50 {serial.p50:.3f} p99 {serial.p99:.3f} ms")
        print(f"{label}: concurrency 64: {load.rps:.0f} req/s, p50 {load.p50:.2f} p99 {load.p99:.2f} ms, "
              f"errors {load.errors}")
        print(f"{label}: CPU per request (µs): "
              + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + f", sum {sum(cpu.values()):.0f}")
        print(f"{label}: write syscalls per request: " + ", ".join(f"{k} {v:.2f}" for k, v in w.items()))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
