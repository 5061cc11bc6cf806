#!/usr/bin/env bash
# The cluster test (tests/e2e/cluster.rs): a 3-node RabbitMQ 3.10 cluster on this machine, two
# webhookd instances (the real binary) on it, 1,000 webhooks and 5,000 events for three webhooks
# each, a receiver that fails one attempt in five; a broker node and an instance are killed with
# SIGKILL mid-run and restarted. It asserts that nothing is lost and prints the duplicates and
# the time taken. The nodes are its own, on free ports (scripts/broker.sh, sharing one home), so
# it runs beside the suite's nodes; it takes a few minutes, which is why the suite leaves it out.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

export WEBHOOKD_BROKER_VERSION=3.10
started=$SECONDS
cargo test --locked --test e2e "$@" -- --ignored --exact --nocapture \
  cluster::two_instances_on_a_cluster_lose_nothing_through_a_node_and_an_instance_killed
echo "cluster-test.sh: took $((SECONDS - started)) s" >&2
