#!/usr/bin/env bash
# webhookd's speed benchmark: builds in release, starts (or reuses) a private RabbitMQ node of
# its own, so it never disturbs a test run, and measures the raw limits and webhookd in one run.
# Prints one table and writes it as JSON to target/bench/. Past runs: benches/RESULTS.md.
#
#   scripts/bench.sh            full run: 3 runs per figure, N = 200,000, a 1,000,000 backlog
#   scripts/bench.sh --smoke    every scenario once at small sizes (CI runs the same smoke in
#                               debug through `cargo test --all-targets`)
#
# Other options: --runs N, --out PATH, --log-level LEVEL (webhookd's; default info),
# --latency-rate N (events/s in the latency scenario; default 2,000).
# The broker port is WEBHOOKD_BENCH_BROKER_PORT (default 5680).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${WEBHOOKD_BENCH_BROKER_PORT:-5680}
node=webhookd-bench
scripts/broker.sh start "$node" "$port"
# Start from an empty node: an interrupted run leaves queues (a million messages, perhaps) behind.
# The node's chatter is shown only if a step fails.
for step in stop_app reset start_app; do
  if ! output=$(scripts/broker.sh ctl "$node" "$step" 2>&1); then
    echo "$output" >&2
    exit 1
  fi
done
export WEBHOOKD_BENCH_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"

cargo bench --locked --bench webhookd -- "$@"
