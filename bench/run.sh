#!/usr/bin/env bash
# The benchmark in one command: builds Switchyard and the fake provider (release), installs
# oha, nats-server and LiteLLM's proxy if they are missing, runs every scenario, and writes
# docs/benchmarks.md and docs/benchmarks.svg. Options go to bench/bench.py:
#   --quick        short runs, to check the harness
#   --no-litellm   skip the LiteLLM side by side
#   --only 1,3     run only these scenarios (the others keep their last numbers); e.g.
#                  `--only 6` for the workflow scenario alone; `--only 3,9` for throughput on one
#                  node and on a 3-node cluster (replicas 3) side by side
# CARGO_TARGET_DIR is honoured (the binaries are looked for where cargo put them).
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION="1.16.0"
LITELLM_PIN="litellm[proxy]==1.106.2"

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
[ -n "$scripts_dir" ] && export PATH="$scripts_dir:$HOME/.cargo/bin:$PATH"

command -v oha >/dev/null || cargo install --locked "oha@$OHA_VERSION"

no_litellm=0
prev=""
for arg in "$@"; do
  [ "$arg" = "--no-litellm" ] && no_litellm=1
  # `--only` without 8 (the LiteLLM side by side) does not need LiteLLM either.
  if [ "$prev" = "--only" ]; then case ",$arg," in *,8,*) ;; *) no_litellm=1 ;; esac; fi
  prev=$arg
done
if [ "$no_litellm" = 0 ] && [ ! -x bench/.venv-litellm/bin/litellm ]; then
  python3 -m venv bench/.venv-litellm
  bench/.venv-litellm/bin/pip install --quiet --disable-pip-version-check "$LITELLM_PIN"
fi

cargo build --release --bin switchyard -p switchyard --bin switchyard-fake-provider -p switchyard-fake-provider
# The same locator as `switchyard up` and the tests: PATH, else the pinned release, fetched once.
nats_server=$("${CARGO_TARGET_DIR:-target}/release/switchyard" nats-server)
export PATH="$(dirname "$nats_server"):$PATH"
python3 bench/bench.py "$@"
