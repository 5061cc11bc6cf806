#!/usr/bin/env bash
# The whole test suite: unit tests once, then the end-to-end tests and the benchmark's smoke run
# against each RabbitMQ webhookd is tested on — Debian 12's 3.10 and Debian 13's 4.0 — on nodes
# this script starts (installing 3.10, or building the Debian 13 root for 4.0, if missing; see
# scripts/broker.sh), then the cluster test (scripts/cluster-test.sh) and the package under a real
# systemd (scripts/systemd-test.sh). Extra arguments go to `cargo test` (e.g. a test name
# filter), and leave those two out.
#
# Overridable: WEBHOOKD_TEST_BROKER_VERSIONS (which, in order: "3.10 4.0"), WEBHOOKD_TEST_NODE
# (the 3.10 node's name, webhookd-test; the 4.0 node's is that plus "-4"), and the AMQP ports
# WEBHOOKD_TEST_BROKER_PORT (3.10's, 5679) and WEBHOOKD_TEST_BROKER_PORT_4 (4.0's, 5681: the
# benchmark's own node has 5680).
#
# `--screenshots` (first argument) has the console's browser tests save the pages they visit into
# docs/screenshots, the pictures the README shows.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--screenshots" ]; then
  shift
  export WEBHOOKD_SCREENSHOTS=$PWD/docs/screenshots
fi

# The console's tests drive Debian's Chromium through Debian's chromedriver (never a downloaded
# browser); install them once.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "test.sh: installing Debian's chromium and chromium-driver for the console tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

node=${WEBHOOKD_TEST_NODE:-webhookd-test}
pass=0
for version in ${WEBHOOKD_TEST_BROKER_VERSIONS:-3.10 4.0}; do
  case "$version" in
    3.10) name=$node port=${WEBHOOKD_TEST_BROKER_PORT:-5679} ;;
    4.0) name=$node-4 port=${WEBHOOKD_TEST_BROKER_PORT_4:-5681} ;;
    *)
      echo "test.sh: no test node for RabbitMQ '$version' (expected 3.10 or 4.0)" >&2
      exit 2
      ;;
  esac
  started=$SECONDS
  # Exported, so the tests' own nodes (PrivateNode, through broker.sh) run the same version.
  export WEBHOOKD_BROKER_VERSION=$version
  scripts/broker.sh start "$name" "$port"
  export WEBHOOKD_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$port/%2f"
  if [ $pass -eq 0 ]; then
    # --all-targets includes the benchmark (benches/webhookd): run without `--bench`, it does
    # its smoke run, every scenario once at small sizes, against this broker with the debug
    # build, so it cannot rot and CI needs no release build for it. A name filter skips it
    # unless it names it.
    cargo test --locked --all-targets "$@"
  else
    # The unit tests do not talk to the broker: once is enough.
    cargo test --locked --test e2e --bench webhookd "$@"
  fi
  echo "test.sh: the pass against RabbitMQ $version took $((SECONDS - started)) s" >&2
  pass=$((pass + 1))
done
if [ $# -eq 0 ]; then
  scripts/cluster-test.sh
  # The package under a real systemd, in a Debian 12 root of its own (reuses the debug build).
  scripts/systemd-test.sh
fi
