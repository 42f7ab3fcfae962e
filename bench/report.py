"""Turns bench/results.json into docs/benchmarks.md (one table, the targets, the commands,
machine facts and versions, then the hand-written notes in bench/notes.md) and
docs/benchmarks.svg (latency percentiles at a fixed 1,000 requests/s)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NA = "—"


def ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NA
    return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms"


def num(v: float | None, unit: str = "") -> str:
    return NA if v is None else f"{v:,.0f}{unit}"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return NA
    return f"{a / b:.2f}×"


def metrics(s: dict) -> dict[str, float]:
    """The numbers the targets are judged on, from one run's scenarios (whichever it has)."""
    m: dict[str, float] = {}
    if "serial" in s:
        m["serial_p50"] = s["serial"]["switchyard"]["p50"] - s["serial"]["direct"]["p50"]
    if "fixed" in s:
        d, y = s["fixed"]["direct"], s["fixed"]["switchyard"]
        m["fixed_p50"], m["fixed_p99"] = y["p50"] - d["p50"], y["p99"] - d["p99"]
    run = s.get("max", {}).get("256")
    if run:
        m["rps_256"] = run["switchyard"]["rps"]
        m["of_direct_256"] = run["switchyard"]["rps"] / run["direct"]["rps"]
    for c, cpu in s.get("cpu_us_per_request", {}).items():
        m[f"cpu_{c}"] = cpu["gateway"] + cpu["worker"] + cpu["nats-server"]
    if "ttft" in s:
        d, y = s["ttft"]["direct"], s["ttft"]["switchyard"]
        m["ttft_p50"] = pct(y, 0.5) - pct(d, 0.5)
    if "workflow" in s:
        w = s["workflow"]
        m["workflow_p50"] = w["serial"]["p50"]
        for c, run in w["throughput"].items():
            m[f"steps_{c}"] = run["steps_per_s"]
            cpu = run["cpu_us_per_step"]
            m[f"step_cpu_{c}"] = cpu["gateway"] + cpu["worker"] + cpu["nats-server"]
    if "scale" in s and "1" in s["scale"] and "4" in s["scale"]:
        m["scale_4"] = s["scale"]["4"]["rps"] / (4 * s["scale"]["1"]["rps"])
    if "rss_mb" in s:
        m["gateway_rss"] = s["rss_mb"]["gateway"]
    return m


# Each target: what it says, how its measure reads, the measure, and whether a value meets it
# (`None`: met when it beats the build in bench/before.json). The first eleven are the
# performance issue's (eight targets and three "than before"); the others the first
# benchmark's.
TARGETS = [
    ("Serial overhead p50 ≤ 0.8 ms", ms, "serial_p50", lambda v: v <= 0.8),
    ("Overhead p50 ≤ 1 ms at 1,000 req/s", ms, "fixed_p50", lambda v: v <= 1),
    ("Overhead p99 ≤ 3 ms at 1,000 req/s", ms, "fixed_p99", lambda v: v <= 3),
    ("≥ 8,000 completions/s at concurrency 256", lambda v: f"{num(v)}/s", "rps_256", lambda v: v >= 8000),
    ("… or ≥ 0.2× of direct in the same run", lambda v: f"{v:.2f}×", "of_direct_256", lambda v: v >= 0.2),
    ("CPU per completion ≤ 200 µs, gateway + worker + nats-server, concurrency 64",
     lambda v: f"{v:.0f} µs", "cpu_64", lambda v: v <= 200),
    ("… the same at concurrency 256", lambda v: f"{v:.0f} µs", "cpu_256", lambda v: v <= 200),
    ("Time-to-first-token overhead p50 ≤ 1 ms", ms, "ttft_p50", lambda v: v <= 1),
    ("Workflow overhead (scenario 6), serial p50: lower than before", ms, "workflow_p50", None),
    ("Workflow steps/s (scenario 6), 32 in flight: higher than before", lambda v: f"{num(v)}/s", "steps_32", None),
    ("Workflow CPU per step (scenario 6), 32 in flight: lower than before", lambda v: f"{v:.0f} µs",
     "step_cpu_32", None),
    ("Workflow orchestration overhead p50 ≤ 10 ms (scenario 6)", ms, "workflow_p50", lambda v: v <= 10),
    ("≥ 500 workflow steps/s, everything co-located (scenario 6, 32 in flight)", lambda v: f"{num(v)}/s",
     "steps_32", lambda v: v >= 500),
    ("Scale-out ≥ 0.9 of linear, 1 → 4 workers", lambda v: f"{v:.2f}", "scale_4", lambda v: v >= 0.9),
    ("Gateway RSS ≤ 100 MB under scenario 3", lambda v: f"{v:.0f} MB", "gateway_rss", lambda v: v <= 100),
]
# Better when lower, for the targets judged against the earlier build.
LOWER_IS_BETTER = {"workflow_p50", "step_cpu_32"}


def targets_table(results: dict) -> list[str]:
    now = metrics(results["scenarios"])
    path = ROOT / "bench" / "before.json"
    before_run = json.loads(path.read_text()) if path.exists() else None
    before = metrics(before_run["scenarios"]) if before_run else {}
    lines = []
    if before_run:
        lines += [f"*Before* is `bench/before.json`: {before_run['machine']['switchyard']}, measured "
                  f"{before_run['machine']['date']} on this machine with this harness "
                  "(`CARGO_TARGET_DIR=<that build> python3 bench/bench.py --before <commit> --no-litellm --only …`; "
                  "its nats-server on every core, as that build's `switchyard up` ran it). "
                  "Why each missed target is missed, and what the profile shows, is under "
                  "[Targets missed, and why](#targets-missed-and-why).", ""]
    lines += ["| target | before | now | met |", "|---|---|---|---|"]
    for label, show, key, meets in TARGETS:
        value = now.get(key)
        if value is None:
            met = NA
        elif meets is None:
            earlier = before.get(key)
            better = None if earlier is None else (value < earlier if key in LOWER_IS_BETTER else value > earlier)
            met = NA if better is None else ("yes" if better else "**no**")
        else:
            met = "yes" if meets(value) else "**no**"
        lines.append(f"| {label} | {show(before[key]) if key in before else NA} | "
                     f"{show(value) if value is not None else 'not measured'} | {met} |")
    return lines


def write(results: dict) -> None:
    s = results["scenarios"]
    lite = s.get("litellm", {})
    # LiteLLM's figures from another run are shown, but not set against this run's (the
    # machine may have changed between them).
    lite_when = results.get("measured", {}).get("litellm", "")
    apart = bool(lite) and not lite_when.startswith(results["machine"]["date"])
    rows = []

    if "serial" in s:
        d, y = s["serial"]["direct"], s["serial"]["switchyard"]
        l = lite.get("serial")
        for q in ("p50", "p99"):
            rows.append(("1", f"Overhead, serial, {q}", ms(d[q]), ms(y[q]), ms(y[q] - d[q]),
                         ms(l[q]) if l else NA, ms(l[q] - d[q]) if l and not apart else NA))
    if "fixed" in s:
        d, y = s["fixed"]["direct"], s["fixed"]["switchyard"]
        l = lite.get("fixed")
        for q in ("p50", "p99", "p999"):
            label = "p99.9" if q == "p999" else q
            rows.append(("2", f"Overhead at 1,000 req/s for {'10' if results['quick'] else '60'} s, {label}",
                         ms(d[q]), ms(y[q]), ms(y[q] - d[q]), ms(l[q]) if l else NA,
                         ms(l[q] - d[q]) if l and not apart else NA))
        rows.append(("2", "… achieved rate / errors", f"{num(d['rps'])}/s, {d['errors']}",
                     f"{num(y['rps'])}/s, {y['errors']}", "", f"{num(l['rps'])}/s, {l['errors']}" if l else NA, ""))
    if "max" in s:
        for c, runs in s["max"].items():
            d, y = runs["direct"], runs["switchyard"]
            l = lite.get("max", {}).get(c)
            rows.append(("3", f"Max throughput, concurrency {c}", f"{num(d['rps'])}/s", f"{num(y['rps'])}/s",
                         ratio(y["rps"], d["rps"]) + " of direct", f"{num(l['rps'])}/s" if l else NA,
                         ratio(y["rps"], l["rps"]) + " of LiteLLM" if l and not apart else NA))
            rows.append(("3", f"… p99 / errors, concurrency {c}", f"{ms(d['p99'])}, {d['errors']}",
                         f"{ms(y['p99'])}, {y['errors']}", "", f"{ms(l['p99'])}, {l['errors']}" if l else NA, ""))
        if "cpu_us_per_request" in s:
            for c, cpu in s["cpu_us_per_request"].items():
                rows.append(("3", f"… CPU per completion, concurrency {c} (gateway / worker / nats-server)", NA,
                             f"{cpu['gateway']:.0f} / {cpu['worker']:.0f} / {cpu['nats-server']:.0f} µs", "", NA, ""))
    if "ttft" in s:
        d, y = s["ttft"]["direct"], s["ttft"]["switchyard"]
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            rows.append(("4", f"Time to first token, serial, {label}", ms(pct(d, q)), ms(pct(y, q)),
                         ms(pct(y, q) - pct(d, q)), NA, ""))
    if "scale" in s:
        one = s["scale"].get("1", {}).get("rps")
        for n, run in s["scale"].items():
            rows.append(("5", f"Scale-out, {n} worker process(es), provider 200 ms", NA, f"{num(run['rps'])}/s",
                         f"{run['rps'] / (int(n) * one):.2f} of linear" if one else NA, NA, ""))
    if "workflow" in s:
        w = s["workflow"]
        ser = w["serial"]
        commit = w["commit"].split("(", 1)[-1].split(",", 1)[0]
        when = f" (measured {w['date']} at {commit}{', quick run' if w.get('quick') else ''})"
        for q in ("p50", "p99"):
            rows.append(("6", f"Workflow, 5-step plan + synthesis + review, 0 ms provider, serial, {q}"
                         + (when if q == "p50" else ""),
                         NA, f"{ms(ser['wall_' + q])} wall", f"{ms(ser[q])} overhead", NA, ""))
        for c, run in w["throughput"].items():
            secs = run.get("duration_s", round(run["seconds"] / 10) * 10)
            rows.append(("6", f"Workflow throughput, {c} workflows in flight, {secs:.0f} s",
                         NA, f"{num(run['steps_per_s'])} steps/s", f"{run['workflows_per_s']:.1f} workflows/s, "
                         f"each {ms(run['wall_p50'])} (p50), errors {run['failed'] + run['errors']}", NA, ""))
            cpu = run["cpu_us_per_step"]
            rows.append(("6", f"… CPU per step, {c} in flight (gateway / worker / nats-server)", NA,
                         f"{cpu['gateway']:.0f} / {cpu['worker']:.0f} / {cpu['nats-server']:.0f} µs", "", NA, ""))
    else:
        rows.append(("6", "Workflow orchestration, 5-step plan", NA, "not measured", "", NA, ""))
    if "rss_mb" in s:
        r = s["rss_mb"]
        rows.append(("7", "Peak RSS under scenario 3 (gateway / worker / nats-server)", NA,
                     f"{r['gateway']:.0f} / {r['worker']:.0f} / {r['nats-server']:.0f} MB", "",
                     f"{lite['rss_mb']:.0f} MB (proxy)" if lite.get("rss_mb") else NA, ""))
    if "replicas3" in s:
        one = s.get("max", {})
        for c, y in s["replicas3"]["max"].items():
            base = one.get(c, {}).get("switchyard")
            rows.append(("9", f"Max throughput on a 3-node cluster, replicas 3, concurrency {c}", NA,
                         f"{num(y['rps'])}/s", ratio(y["rps"], base["rps"]) + " of replicas 1" if base else NA,
                         NA, ""))
            rows.append(("9", f"… p99 / errors, replicas 3, concurrency {c}", NA, f"{ms(y['p99'])}, {y['errors']}",
                         "", NA, ""))
        for c, cpu in s["replicas3"]["cpu_us_per_request"].items():
            rows.append(("9", f"… CPU per completion, replicas 3, concurrency {c} (gateway / worker / 3 nats-servers)",
                         NA, f"{cpu['gateway']:.0f} / {cpu['worker']:.0f} / {cpu['nats-server']:.0f} µs", "", NA, ""))

    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/run.sh from bench/results.json and bench/notes.md; edit those, not this. -->",
        "",
        "Every component on one machine, as on a user's laptop: `nats-server` with JetStream, the",
        "fake provider as its own process (`switchyard-fake-provider`, a real HTTP server on",
        "loopback answering at once), Switchyard's gateway and worker as separate processes, the",
        "load generator, and LiteLLM's proxy configured offline against its own copy of the same",
        "fake. *Direct* is the fake provider called without a gateway; the difference is the",
        "gateway's overhead, including Switchyard's durable hop through JetStream.",
        "",
        "Reproduce: `bench/run.sh` (add `--quick` for a short check, `--no-litellm` to skip LiteLLM,",
        "`--only 6` for one scenario: the others keep their last numbers, and scenario 6's rows say when",
        "they were measured).",
        "" if not results["quick"] else "\n**These numbers come from a `--quick` run: short and rough.**\n",
        "| # | scenario | direct | Switchyard | Switchyard − direct | LiteLLM | LiteLLM − direct / ratio |",
        "|---|---|---|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        *([f"The LiteLLM column was measured {lite_when}, not in this run; it is not set against this run's "
           "figures (see *Machine and versions*).", ""] if apart else []),
        "![Latency percentiles at a fixed 1,000 requests/s](benchmarks.svg)",
        "",
        "## Targets",
        "",
        *targets_table(results),
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in m.items()],
        *[f"- `{name}` kept from an earlier run: {stamp}" for name, stamp in sorted(results.get("measured", {}).items())
          if not stamp.startswith(m["date"])],
        "",
        "## Exact commands",
        "",
        "`bench/bench.py` runs, per scenario (`$URL` is the gateway, the fake or LiteLLM; LiteLLM",
        "also gets `-H 'authorization: Bearer <local master key>'`):",
        "",
        "```",
        "1: oha --no-tui --output-format json -m POST -H 'content-type: application/json' -d \"$BODY\" -c 1 -n 2000 $URL/v1/chat/completions",
        "2: oha … -c 256 -z 60s -q 1000 --latency-correction $URL/v1/chat/completions",
        "3: oha … -c 64 -z 20s …   and   oha … -c 256 -z 20s …",
        "4: 1,000 serial streamed requests from Python's http.client; time to the first chunk with text",
        "5: provider latency 200 ms, 1 / 2 / 4 `switchyard worker` processes with concurrency 16 each; oha … -c 256 -z 20s",
        "6: bench/workflows.py: POST /v1/tasks {goal, steps: a, b, c; d after them; e after d} then",
        "   GET /v1/tasks/{id}/events until `done`; 100 one after another, then 32 and 64 callers for 30 s each",
        "7: VmHWM of each process after scenario 3 (fresh processes)",
        "9: as 3, with three nats-server nodes on this machine running nats/cluster.conf and nats.replicas = 3",
        "```",
        "",
        "The body is `{\"model\": \"bench\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello to the benchmark.\"}]}`;",
        "Switchyard runs with `RUST_LOG=warn`, one gateway and one worker (concurrency 256,",
        "`max_in_flight` 4096), and nats-server with `GOMAXPROCS` at half the cores, as `switchyard up`",
        "runs it (since 27859b4; *before* ran it with all of them, as that build's `up` did);",
        "LiteLLM runs its proxy's defaults with `LITELLM_LOCAL_MODEL_COST_MAP=True`",
        "and a local master key, and only ever talks to loopback.",
        "",
    ]
    notes = ROOT / "bench" / "notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))
    if "fixed" in s:
        (ROOT / "docs" / "benchmarks.svg").write_text(svg(s["fixed"], lite.get("fixed")))


def svg(fixed: dict, lite: dict | None) -> str:
    """Grouped bars of p50/p90/p99/p99.9 latency per system, on a log scale."""
    series = [("direct", "#888888", fixed["direct"]), ("Switchyard", "#1f77b4", fixed["switchyard"])]
    if lite:
        series.append(("LiteLLM", "#d62728", lite))
    quantiles = [("p50", "p50"), ("p90", "p90"), ("p99", "p99"), ("p999", "p99.9")]
    w, h, left, top, bottom = 760, 380, 70, 40, 60
    plot_h = h - top - bottom
    values = [s[q] for _, _, s in series for q, _ in quantiles if s[q] and s[q] > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    y = lambda v: top + plot_h * (1 - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))  # noqa: E731
    group_w = (w - left - 20) / len(quantiles)
    bar_w = group_w * 0.8 / len(series)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">Latency at a fixed 1,000 requests/s (log scale)</text>']
    decade = lo
    while decade <= hi:
        parts.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">{decade:g} ms</text>')
        decade *= 10
    for gi, (q, label) in enumerate(quantiles):
        gx = left + gi * group_w + group_w * 0.1
        for si, (_, color, s) in enumerate(series):
            v = s[q]
            if not v or v <= 0:
                continue
            x = gx + si * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar_w - 2:.1f}" height="{top + plot_h - y(v):.1f}" fill="{color}"/>')
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y(v) - 4:.1f}" text-anchor="middle" font-size="10">{v:.1f}</text>')
        parts.append(f'<text x="{left + gi * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{label}</text>')
    for si, (name, color, _) in enumerate(series):
        lx = left + si * 130
        parts.append(f'<rect x="{lx}" y="{h - 22}" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{lx + 18}" y="{h - 12}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    write(json.loads((ROOT / "bench" / "results.json").read_text()))
    print("wrote docs/benchmarks.md and docs/benchmarks.svg", file=sys.stderr)
