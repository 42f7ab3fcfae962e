#!/usr/bin/env python3
"""Renders and validates what Switchyard ships for deployment, with no cluster and no Docker.

- deploy/switchyard (the Helm chart): linted and rendered by Helm's own Go SDK
  (helm-python-sdk), for several sets of values; every rendered object is checked against
  Kubernetes' OpenAPI schemas in strict mode (kubernetes-validate) for the oldest and newest
  Kubernetes the chart supports, KEDA's ScaledObject against deploy/schemas/, and the objects
  against each other (selectors, names, ports, the configuration they mount).
- compose.yaml: the Compose Specification's JSON schema (check-jsonschema's vendored copy),
  then what the schema cannot see (mounted files exist, dependencies and NATS hosts are
  services, SWITCHYARD__… variables are real configuration keys).
- Then it breaks a few objects on purpose and requires each check to notice (a validator
  that accepts everything would otherwise pass silently).

The NATS chart is a dependency that CI cannot download: without deploy/switchyard/charts/nats
the chart renders with the dependency absent (Helm's renderer leaves a missing subchart out;
its linter's one "missing dependency" warning is expected and reported, every other finding
fails). After `helm dependency build deploy/switchyard` the subchart is rendered and
validated too.

Run through deploy/check.sh, which installs the pinned tools. Exit status 1 on any problem.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "switchyard"
KEDA_SCHEMA = ROOT / "deploy" / "schemas" / "keda-scaledobject.json"
COMPOSE = ROOT / "compose.yaml"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
# nats-server, to test the compose nodes' configuration (`-t`): SWITCHYARD_NATS_SERVER (.ci/run
# sets it) or the one on PATH; without one that part is skipped, and said so.
NATS_SERVER = os.environ.get("SWITCHYARD_NATS_SERVER") or shutil.which("nats-server")
CHECKED_NODES: list[str] = []

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest
# kubernetes-validate knows.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
RELEASE, NAMESPACE = "sy", "switchyard"
# Kinds the chart (and the NATS chart) may render, validated against Kubernetes' schemas.
CORE_KINDS = {
    "ConfigMap", "Secret", "Service", "Deployment", "StatefulSet", "PodDisruptionBudget",
    "ServiceAccount", "Pod",
}
MISSING_NATS = "chart directory is missing these dependencies: nats"

# Sets of values the chart must render and validate with.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "without KEDA": {"worker": {"autoscaling": {"enabled": False}, "replicas": 3}},
    "external NATS, keys as values, no tools or memory": {
        "nats": {"enabled": False},
        "natsUrl": "nats://worker:pw@nats-a.example:4222,nats://worker:pw@nats-b.example:4222",
        "streamReplicas": 3,
        "secrets": {"values": {"GROQ_API_KEY": "gsk-test"}},
        "tools": {"enabled": False},
        "memory": {"enabled": False},
        "worker": {"autoscaling": {"natsMonitoringEndpoint": "nats-mon.example:8222",
                                   "account": "SWITCHYARD"}},
        "config": '[nats]\nurl = "nats://127.0.0.1:4222"\n\n[gateway]\ndrain_timeout_ms = 20000\n',
    },
    "existing secret, route password": {
        "secrets": {"existingSecret": "switchyard-keys"},
        "nats": {"config": {"cluster": {"routeURLs": {"password": "s3cretroutepw"}}}},
        "logJson": False,
    },
}


class Problems:
    """Every problem found, with where it was found; the run fails if there is any."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


# ---------------------------------------------------------------------------- the chart


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's objects for `values`, as Helm renders them (NOTES.txt left out)."""
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})["__source"] = path
                objects.append(doc)
    return objects


def source(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('__source', '?')} {obj.get('kind')}/{meta.get('name')}"


def without_source(obj: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(obj)
    clean.get("metadata", {}).pop("__source", None)
    return clean


def check_schema(obj: dict[str, Any], keda: dict[str, Any], problems: Problems) -> None:
    """One object against its schema: Kubernetes' for core kinds, ours for ScaledObject."""
    where, clean, kind = source(obj), without_source(obj), obj.get("kind")
    if kind == "ScaledObject":
        for error in jsonschema.Draft202012Validator(keda).iter_errors(clean):
            path = "/".join(str(p) for p in error.absolute_path)
            problems.add(where, f"{path}: {error.message}")
        spec = clean.get("spec", {})
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if isinstance(low, int) and isinstance(high, int) and low > high:
            problems.add(where, "minReplicaCount must be less than or equal to maxReplicaCount")
    elif kind in CORE_KINDS:
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(clean, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problems.add(where, f"Kubernetes {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.add(where, f"Kubernetes {version}: {e}")
    else:
        problems.add(where, f"kind {kind!r} is not one this check knows how to validate")


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_together(objects: list[dict[str, Any]], values: dict[str, Any],
                   problems: Problems) -> None:
    """What no schema sees: that the objects refer to each other correctly."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind", ""), {})[obj["metadata"].get("name", "")] = obj
    workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
    pod_labels = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads.values()]
    config_maps, secrets = by_kind.get("ConfigMap", {}), set(by_kind.get("Secret", {}))
    merged = helm.Chart.load(str(CHART)).merge_values(values)
    if merged["secrets"]["existingSecret"]:
        secrets.add(merged["secrets"]["existingSecret"])
    documented = documented_keys()

    for name, w in workloads.items():
        where = source(w)
        selector = w["spec"]["selector"].get("matchLabels", {})
        if not labels_match(selector, w["spec"]["template"]["metadata"].get("labels", {})):
            problems.add(where, "spec.selector does not match the pod template's labels")
        pod = w["spec"]["template"]["spec"]
        for volume in pod.get("volumes", []):
            ref = volume.get("configMap", {}).get("name")
            if ref and ref not in config_maps:
                problems.add(where, f"volume {volume['name']} mounts ConfigMap {ref}, which is not rendered")
        mounted = {v["name"] for v in pod.get("volumes", [])} | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for container in pod.get("containers", []):
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in mounted:
                    problems.add(where, f"{container['name']} mounts volume {mount['name']}, which the pod lacks")
            for env_from in container.get("envFrom", []):
                ref = env_from.get("secretRef", {}).get("name")
                if ref and ref not in secrets:
                    problems.add(where, f"{container['name']} reads Secret {ref}, which is neither rendered nor secrets.existingSecret")
            ports = {p.get("name") for p in container.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.add(where, f"{container['name']} {probe} uses port {port!r}, which it does not declare")
            for env in container.get("env", []):
                m = re.fullmatch(r"SWITCHYARD__([A-Z0-9_]+?)__([A-Z0-9_]+)", env["name"])
                if m and not w["metadata"]["name"].startswith(f"{RELEASE}-nats"):
                    key = f"{m.group(1)}.{m.group(2)}".lower().replace("__", ".")
                    if key not in documented:
                        problems.add(where, f"{env['name']} is not a configuration key ({key} is not in docs/configuration.md)")

    for kind in ("Service", "PodDisruptionBudget"):
        for obj in by_kind.get(kind, {}).values():
            spec = obj["spec"]
            selector = spec.get("selector", {})
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            if not any(labels_match(selector, labels) for labels in pod_labels):
                problems.add(source(obj), "its selector matches no rendered pod")

    for so in by_kind.get("ScaledObject", {}).values():
        target = so["spec"]["scaleTargetRef"]["name"]
        deployment = by_kind.get("Deployment", {}).get(target)
        if deployment is None:
            problems.add(source(so), f"scaleTargetRef names Deployment {target}, which is not rendered")
        elif "replicas" in deployment["spec"]:
            problems.add(source(deployment), "sets replicas although KEDA's HPA owns the count")
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            if meta.get("stream") != "TASKS":
                problems.add(source(so), f"trigger reads stream {meta.get('stream')!r}; the tasks are on TASKS")
            if not re.fullmatch(r"tasks-(agent-[a-z0-9_-]{1,58}|[a-z0-9_-]{1,64}-(high|normal|low))",
                                meta.get("consumer", "")):
                problems.add(source(so), f"consumer {meta.get('consumer')!r} is not a worker consumer's name (crates/shared/src/names.rs)")

    config_map = config_maps.get(f"{RELEASE}-switchyard-config")
    if config_map is None:
        problems.add("chart", "no switchyard.toml ConfigMap")
        return
    try:
        config = tomllib.loads(config_map["data"]["switchyard.toml"])
    except (KeyError, tomllib.TOMLDecodeError) as e:
        problems.add(source(config_map), f"switchyard.toml does not parse: {e}")
        return
    for component in ("gateway", "worker"):
        drain_ms = config.get(component, {}).get("drain_timeout_ms", 30000)
        deployment = by_kind.get("Deployment", {}).get(f"{RELEASE}-switchyard-{component}")
        if deployment:
            grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if grace * 1000 <= drain_ms:
                problems.add(source(deployment), f"terminationGracePeriodSeconds {grace} s does not cover {component}.drain_timeout_ms {drain_ms}")


def documented_keys() -> set[str]:
    """Configuration keys named in docs/configuration.md's table (`section.key`)."""
    keys = set()
    for line in CONFIG_DOC.read_text().splitlines():
        m = re.match(r"\| `([a-z_]+\.[a-z_.<>]+)`", line)
        if m:
            keys.add(m.group(1))
    return keys


def lint(problems: Problems) -> None:
    """Helm's linter, strict; the absent NATS dependency is the one finding allowed."""
    has_nats = (CHART / "charts").is_dir() and any((CHART / "charts").glob("nats*"))
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    for message in report.get("messages", []):
        if message["severity"] < 2:
            continue
        if not has_nats and message["error"] == MISSING_NATS:
            print("  note: the NATS chart is not in deploy/switchyard/charts (helm dependency build): "
                  "rendered without it")
            continue
        problems.add(f"helm lint {message['path']}", message["error"])


def check_chart(problems: Problems) -> int:
    keda = json.loads(KEDA_SCHEMA.read_text())
    lint(problems)
    count = 0
    for name, values in VALUE_SETS.items():
        try:
            objects = render(values)
        except helm.HelmError as e:
            problems.add(f"render ({name})", str(e))
            continue
        found = Problems()
        for obj in objects:
            check_schema(obj, keda, found)
        check_together(objects, values, found)
        problems.items.extend(f"[{name}] {item}" for item in found.items)
        kinds = sorted({o["kind"] for o in objects})
        print(f"  rendered ({name}): {len(objects)} objects: {', '.join(kinds)}")
        count += len(objects)
    return count


# ---------------------------------------------------------------------------- compose.yaml


def check_compose(path: Path, problems: Problems, quiet: bool = False) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         "--output-format", "text", str(path)],
        capture_output=True, text=True, check=False)
    if result.returncode != 0:
        problems.add(str(path.name), "does not match the Compose Specification:\n"
                     + (result.stdout + result.stderr).strip())
        return
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    documented = documented_keys()
    for name, service in services.items():
        where = f"{path.name} services.{name}"
        for volume in service.get("volumes", []):
            host = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if host.startswith((".", "/")) and not (path.parent / host).exists():
                problems.add(where, f"mounts {host}, which does not exist")
        depends = service.get("depends_on", {})
        for dep in depends if isinstance(depends, (dict, list)) else []:
            if dep not in services:
                problems.add(where, f"depends on {dep}, which is not a service")
            elif set(services[dep].get("profiles", [])) - set(service.get("profiles", [])):
                problems.add(where, f"depends on {dep}, which is only in profiles {services[dep]['profiles']}")
        env = service.get("environment", {})
        env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
        for key, value in env.items():
            m = re.fullmatch(r"SWITCHYARD__([A-Z0-9_]+?)__([A-Z0-9_]+)", key)
            if m:
                dotted = f"{m.group(1)}.{m.group(2)}".lower().replace("__", ".")
                if dotted not in documented:
                    problems.add(where, f"{key} is not a configuration key ({dotted} is not in docs/configuration.md)")
            if key == "SWITCHYARD__NATS__URL":
                for server in str(value).split(","):
                    host = re.sub(r"^nats://([^@/]*@)?", "", server.strip()).split(":")[0]
                    if host not in services:
                        problems.add(where, f"nats.url names {host}, which is not a service")
                    elif set(services[host].get("profiles", [])) != set(service.get("profiles", [])):
                        problems.add(where, f"nats.url names {host}, which is in another profile")
        check_nats_node(path, where, service, env, problems)
    if not quiet:
        profiles = sorted({p for s in services.values() for p in s.get("profiles", [])})
        print(f"  {path.name}: {len(services)} services, profiles {profiles}: schema valid")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR}, for an empty environment (the defaults)."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def check_nats_node(path: Path, where: str, service: dict[str, Any], env: dict[str, Any],
                    problems: Problems) -> None:
    """A nats-server service with a config from nats/: every $VARIABLE the file reads is set,
    and nats-server itself accepts the file with that environment (`nats-server -t`)."""
    conf = None
    for volume in service.get("volumes", []):
        host, target = (volume.split(":") + [""])[:2] if isinstance(volume, str) else ("", "")
        if host.startswith("./nats/") and target in (service.get("command") or []):
            conf = path.parent / host
    if conf is None or not conf.exists():
        return
    text = "\n".join(line.split("#", 1)[0] for line in conf.read_text().splitlines())
    wanted = sorted(set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", text)))
    missing = [name for name in wanted if name not in env]
    if missing:
        problems.add(where, f"{conf.name} reads {', '.join(missing)}, which the service does not set")
        return
    server = NATS_SERVER
    if server is None:
        return
    node_env = {k: interpolate(str(v)) for k, v in env.items()}
    with tempfile.TemporaryDirectory() as store:
        node_env = {**node_env, **{k: store for k in node_env if k.endswith("STORE_DIR")}}
        # The caller's environment (a nats-server shim may need it) without any NATS_ variable
        # of its own, which could stand in for one the service fails to set.
        base = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
        result = subprocess.run([server, "-t", "-c", str(conf)], env={**base, **node_env},
                                capture_output=True, text=True, check=False)
    if result.returncode != 0:
        problems.add(where, f"nats-server -t refuses {conf.name} with this environment: "
                     + (result.stdout + result.stderr).strip()[:500])
    else:
        CHECKED_NODES.append(where)


# ---------------------------------------------------------------------------- self-test


def must_fail(name: str, run: Callable[[Problems], None], failures: list[str]) -> None:
    found = Problems()
    run(found)
    if not found.items:
        failures.append(f"self-test: {name} was not detected")
    else:
        print(f"  self-test: {name}: detected ({found.items[0].splitlines()[0][:110]})")


def self_test(tmp: Path) -> list[str]:
    """Breaks rendered objects and compose.yaml on purpose: every check must notice."""
    failures: list[str] = []
    keda = json.loads(KEDA_SCHEMA.read_text())
    objects = render({})
    deployment = next(o for o in objects if o["kind"] == "Deployment"
                      and o["metadata"]["name"] == f"{RELEASE}-switchyard-gateway")
    scaled = next(o for o in objects if o["kind"] == "ScaledObject")

    def broken(obj: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        copied = copy.deepcopy(obj)
        try:
            change(copied)
        except (KeyError, IndexError) as e:
            # The object is not shaped as the case expects: the check above says why.
            failures.append(f"self-test: could not break {source(obj)} (no {e})")
        return copied

    cases = {
        "a Deployment's replicas as a string": broken(
            deployment, lambda d: d["spec"].update(replicas="two")),
        "a misspelt container field": broken(
            deployment, lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always")),
        "a ScaledObject without scaleTargetRef": broken(
            scaled, lambda s: s["spec"].pop("scaleTargetRef")),
        "a nats-jetstream trigger whose lagThreshold is not a number": broken(
            scaled, lambda s: s["spec"]["triggers"][0]["metadata"].update(lagThreshold="ten")),
        "a nats-jetstream trigger without its consumer": broken(
            scaled, lambda s: s["spec"]["triggers"][0]["metadata"].pop("consumer")),
        "an object of an unknown kind": broken(deployment, lambda d: d.update(kind="Deploymnet")),
    }
    for name, obj in cases.items():
        must_fail(name, lambda p, o=obj: check_schema(o, keda, p), failures)

    def wrong_selector(p: Problems) -> None:
        changed = [broken(o, lambda d: d["spec"]["selector"]["matchLabels"].update(
            {"app.kubernetes.io/component": "nothing"})) if o is deployment else o for o in objects]
        check_together(changed, {}, p)
    must_fail("a Deployment whose selector misses its pods", wrong_selector, failures)

    def wrong_env(p: Problems) -> None:
        changed = [broken(o, lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append(
            {"name": "SWITCHYARD__NATS__REPLICA", "value": "3"})) if o is deployment else o for o in objects]
        check_together(changed, {}, p)
    must_fail("a misspelt SWITCHYARD__ variable", wrong_env, failures)

    def misspelt_value(p: Problems) -> None:
        try:
            render({"worker": {"autoscalling": {"enabled": False}}})
        except helm.HelmError as e:
            p.add("render", str(e))
    must_fail("a misspelt chart value (values.schema.json)", misspelt_value, failures)

    def too_many_replicas(p: Problems) -> None:
        try:
            render({"streamReplicas": 5})
        except helm.HelmError as e:
            p.add("render", str(e))
    must_fail("more stream replicas than NATS nodes", too_many_replicas, failures)

    compose = yaml.safe_load(COMPOSE.read_text())
    first = next(iter(compose["services"]))
    bad = copy.deepcopy(compose)
    bad["services"][first]["imagee"] = "nats"
    bad_path = tmp / "compose.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    must_fail("a misspelt compose service key", lambda p: check_compose(bad_path, p, quiet=True), failures)
    nodes = [name for name, service in compose["services"].items()
             if "NATS_ROUTES" in service.get("environment", {})]
    if nodes:
        bad = copy.deepcopy(compose)
        bad["services"][nodes[0]]["environment"].pop("NATS_ROUTES")
        bad_path.write_text(yaml.safe_dump(bad))
        must_fail("a cluster node without NATS_ROUTES", lambda p: check_compose(bad_path, p, quiet=True), failures)
        if NATS_SERVER is not None:
            bad = copy.deepcopy(compose)
            routes = bad["services"][nodes[0]]["environment"]["NATS_ROUTES"]
            bad["services"][nodes[0]]["environment"]["NATS_ROUTES"] = routes.replace(",", "", 1)
            bad_path.write_text(yaml.safe_dump(bad))
            must_fail("a cluster node whose NATS_ROUTES nats-server cannot parse",
                      lambda p: check_compose(bad_path, p, quiet=True), failures)
    return failures


def main() -> int:
    helm.disable_logging()
    problems = Problems()
    print(f"Helm SDK {helm.helm_sdk_version()}, kubernetes-validate for Kubernetes "
          f"{' and '.join(KUBE_VERSIONS)}")
    print("deploy/switchyard:")
    check_chart(problems)
    print("compose.yaml:")
    check_compose(COMPOSE, problems)
    for problem in problems.items:
        print(f"FAIL {problem}", file=sys.stderr)
    if NATS_SERVER is None:
        print("  note: no nats-server (SWITCHYARD_NATS_SERVER): the nodes' configuration was not run through nats-server -t")
    elif CHECKED_NODES:
        print(f"  nats-server -t accepts the configuration of {len(CHECKED_NODES)} node(s) with their environment")
    with tempfile.TemporaryDirectory() as tmp:
        # Mounted files are looked up beside the compose file: give the copy the same tree.
        for entry in ROOT.iterdir():
            if entry.name not in ("compose.yaml", ".git", "target"):
                (Path(tmp) / entry.name).symlink_to(entry)
        failures = self_test(Path(tmp))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if problems.items or failures:
        print(f"deploy/check.py: {len(problems.items) + len(failures)} problem(s)", file=sys.stderr)
        return 1
    print("deploy/check.py: the chart and compose.yaml render and validate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
