#!/usr/bin/env bash
# Starts (or reuses) a private RabbitMQ node for webhookd's demo and tests, installing Debian's
# rabbitmq-server first if it is missing. The node listens on 127.0.0.1 only and keeps all of its
# state under one folder, so it never touches a system-wide broker.
#
#   scripts/broker.sh start NAME PORT     start node NAME@localhost on PORT (idempotent)
#   scripts/broker.sh stop NAME           stop it
#   scripts/broker.sh ctl NAME ARGS...    rabbitmqctl against it
#
# State lives in $WEBHOOKD_BROKER_HOME (default: .local/rabbitmq-NAME in the repository). A
# rabbitmq.conf placed there before the start is the node's config file (the tests add a TLS
# listener that way).
set -euo pipefail

cmd=${1:?usage: broker.sh start|stop|ctl NAME [PORT|ARGS...]}
name=${2:?node name required}
repo=$(cd "$(dirname "$0")/.." && pwd)
home=${WEBHOOKD_BROKER_HOME:-$repo/.local/rabbitmq-$name}
node="$name@localhost"
bin=/usr/lib/rabbitmq/bin

ensure_installed() {
  if [ ! -x "$bin/rabbitmq-server" ]; then
    echo "broker: installing Debian's rabbitmq-server" >&2
    if [ "$(id -u)" -ne 0 ]; then
      echo "broker: rabbitmq-server is not installed and this is not root; run: sudo apt-get install -y rabbitmq-server" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq rabbitmq-server >/dev/null
  fi
}

ctl() { HOME="$home" "$bin/rabbitmqctl" -n "$node" "$@"; }

case "$cmd" in
  start)
    port=${3:?port required}
    ensure_installed
    mkdir -p "$home/mnesia" "$home/log"
    if ctl status >/dev/null 2>&1; then
      echo "broker: $node already running on 127.0.0.1:$port" >&2
      exit 0
    fi
    # Quorum delay queues move expired jobs back at least once: a move whose confirm never came
    # (the work queue was still starting after a broker restart) is retried only after this
    # timeout, 180 s by default in 3.10, which would hold those retries back for three minutes.
    echo '[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 10000}]}].' >"$home/advanced.config"
    # The package's service may hold epmd or the default port; our node only needs its own ports.
    HOME="$home" \
      RABBITMQ_NODENAME="$node" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$port" \
      RABBITMQ_DIST_PORT=$((port > 45000 ? port - 20000 : port + 20000)) \
      RABBITMQ_MNESIA_BASE="$home/mnesia" \
      RABBITMQ_LOG_BASE="$home/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$home/enabled_plugins" \
      RABBITMQ_CONFIG_FILE="$home/rabbitmq" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$home/advanced.config" \
      "$bin/rabbitmq-server" -detached
    # await_startup fails at once until the detached node has registered with epmd: poll it.
    deadline=$((SECONDS + 90))
    until ctl await_startup >/dev/null 2>&1; do
      if [ $SECONDS -ge $deadline ]; then
        echo "broker: $node did not start within 90 s; log: $home/log" >&2
        tail -n 30 "$home"/log/*.log >&2 || true
        exit 1
      fi
      sleep 0.5
    done
    echo "broker: $node running on 127.0.0.1:$port" >&2
    ;;
  stop)
    ctl stop >/dev/null 2>&1 || true
    ;;
  ctl)
    shift 2
    ctl "$@"
    ;;
  *)
    echo "broker.sh: unknown command '$cmd' (expected start, stop or ctl)" >&2
    exit 2
    ;;
esac
