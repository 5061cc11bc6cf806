#!/usr/bin/env bash
# The whole test suite: unit tests, and end-to-end tests against a real RabbitMQ that this script
# starts (installing Debian's rabbitmq-server if it is missing). Extra arguments go to
# `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

port=${WEBHOOKD_TEST_BROKER_PORT:-5679}
scripts/broker.sh start webhookd-test "$port"
export WEBHOOKD_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"

# --all-targets includes the benchmark (benches/webhookd): run without `--bench`, it does its
# smoke run, every scenario once at small sizes, against this broker with the debug build, so it
# cannot rot and CI needs no release build for it. A name filter skips it unless it names it.
cargo test --locked --all-targets "$@"
