#!/usr/bin/env bash
# Runs webhookd on this machine against a private local RabbitMQ (installed and started if
# needed), with config/webhookd.toml and development overrides:
#
#   scripts/run.sh                      start the daemon (Ctrl-C stops it gracefully)
#   scripts/run.sh webhooks add …       any other webhookd command, with the same settings
#
# The broker node, the store and the admin token live under .local/ in the repository.
# Overridable: WEBHOOKD_DEV_PORT (AMQP port, 5673), WEBHOOKD_DEV_NODE (node name),
# WEBHOOKD_PROFILE (cargo profile, release), WEBHOOKD_BIN (a prebuilt binary: skip the build),
# and any WEBHOOKD_<SECTION>__<KEY> setting.
set -euo pipefail
cd "$(dirname "$0")/.."

port=${WEBHOOKD_DEV_PORT:-5673}
node=${WEBHOOKD_DEV_NODE:-webhookd-dev}
state=${WEBHOOKD_DEV_STATE:-$PWD/.local}
mkdir -p "$state"
scripts/broker.sh start "$node" "$port"

if [ ! -s "$state/admin-token" ]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$state/admin-token")
fi
export WEBHOOKD_BROKER__URL=${WEBHOOKD_BROKER__URL:-"amqp://guest:guest@127.0.0.1:$port/%2f"}
export WEBHOOKD_STORE__PATH=${WEBHOOKD_STORE__PATH:-"$state/store"}
export WEBHOOKD_ADMIN__TOKEN_FILE=${WEBHOOKD_ADMIN__TOKEN_FILE:-"$state/admin-token"}
export WEBHOOKD_DELIVERY__ALLOW_NETWORKS=${WEBHOOKD_DELIVERY__ALLOW_NETWORKS:-'["127.0.0.0/8", "::1/128"]'}

if [ $# -eq 0 ]; then
  set -- run
fi
bin=${WEBHOOKD_BIN:-}
if [ -z "$bin" ]; then
  profile=${WEBHOOKD_PROFILE:-release}
  cargo build --locked --quiet --profile "$profile"
  bin=target/$([ "$profile" = dev ] && echo debug || echo "$profile")/webhookd
fi
exec "$bin" --config config/webhookd.toml "$@"
