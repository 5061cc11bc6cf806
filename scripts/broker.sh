#!/usr/bin/env bash
# Starts (or reuses) a private RabbitMQ node for webhookd's demo and tests. The node listens on
# 127.0.0.1 only and keeps all of its state under one folder, so it never touches a system-wide
# broker.
#
#   scripts/broker.sh start NAME PORT     start node NAME@localhost on PORT (idempotent)
#   scripts/broker.sh stop NAME           stop it
#   scripts/broker.sh ctl NAME ARGS...    rabbitmqctl against it
#   scripts/broker.sh join NAME FIRST     make running node NAME a member of FIRST's cluster
#   scripts/broker.sh kill NAME           SIGKILL the node's Erlang VM, as a crash would
#
# State lives in $WEBHOOKD_BROKER_HOME (default: .local/rabbitmq-NAME in the repository).
#
# A cluster is nodes that share one home: each keeps its own data under the home's mnesia/ (a
# folder per node name) and its own log, and all of them read the one Erlang cookie, config
# file and advanced.config there. Start the nodes, then `join` each of the others to the first.
#
# WEBHOOKD_BROKER_VERSION picks the RabbitMQ every command uses:
#   3.10 (default)  Debian 12's rabbitmq-server, installed on this machine if it is missing.
#   4.0             Debian 13's, run from a Debian 13 root (debootstrap) built once into
#                   .local/ and reused. Its nodes register with their own epmd (port 4370), so
#                   they live beside the 3.10 nodes. The root's /proc, /dev and the node's state
#                   folder are mounted only in a private mount namespace of the node's own: none
#                   of it is ever mounted on the host, where deleting the repository would follow
#                   a mount into the machine's /dev.
#
# A rabbitmq.conf placed in the node's home before the start is the node's config file (the
# tests add a TLS listener that way).
set -euo pipefail

cmd=${1:?usage: broker.sh start|stop|ctl NAME [PORT|ARGS...]}
name=${2:?node name required}
repo=$(cd "$(dirname "$0")/.." && pwd)
home=${WEBHOOKD_BROKER_HOME:-$repo/.local/rabbitmq-$name}
node="$name@localhost"
bin=/usr/lib/rabbitmq/bin
version=${WEBHOOKD_BROKER_VERSION:-3.10}

case "$version" in
  3.10) ;;
  4.0)
    root=$repo/.local/debian13-rabbitmq
    epmd_port=4370
    ;;
  *)
    echo "broker.sh: unknown WEBHOOKD_BROKER_VERSION '$version' (expected 3.10 or 4.0)" >&2
    exit 2
    ;;
esac

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "broker: $1 needs root" >&2
    exit 1
  fi
}

apt_install() {
  need_root "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

ensure_installed() {
  if [ ! -x "$bin/rabbitmq-server" ]; then
    echo "broker: installing Debian's rabbitmq-server" >&2
    apt_install rabbitmq-server
  fi
}

# Fails if anything is mounted at or under $1 in the host's namespace: such a folder must never
# be deleted (rm would descend into the mount), nor left behind by a start.
assert_unmounted() {
  if findmnt -rn -o TARGET | grep -qF "$1"; then
    echo "broker: something is mounted under $1 on the host; not touching it:" >&2
    findmnt -rn -o TARGET | grep -F "$1" >&2
    exit 1
  fi
}

# Builds the Debian 13 root with rabbitmq-server 4.0, unless a complete one is there. It is built
# under a temporary name and renamed only once complete, so an interrupted build is simply
# started again; a lock keeps concurrent starts from building it twice.
ensure_root() {
  [ -x "$root$bin/rabbitmq-server" ] && return
  mkdir -p "$(dirname "$root")"
  exec 9>"$root.lock"
  flock 9
  if [ -x "$root$bin/rabbitmq-server" ]; then
    exec 9>&-
    return
  fi
  need_root "building the Debian 13 root for RabbitMQ 4.0"
  if ! command -v debootstrap >/dev/null; then
    apt_install debootstrap
  fi
  local building="$root.building"
  if [ -e "$building" ]; then
    echo "broker: removing an interrupted build at $building" >&2
    assert_unmounted "$building"
    rm -rf --one-file-system "$building"
  fi
  echo "broker: building a Debian 13 root with rabbitmq-server into $root (a few minutes, once)" >&2
  local started=$SECONDS
  mkdir -p "$building"
  # debootstrap mounts /proc and /sys in the target; in a private namespace those mounts end with
  # it, even if it is killed.
  unshare --mount --propagation private \
    debootstrap --variant=minbase trixie "$building" "${WEBHOOKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    >"$root.build.log" 2>&1 || {
    echo "broker: debootstrap failed; log: $root.build.log" >&2
    tail -n 20 "$root.build.log" >&2
    exit 1
  }
  # No service is ever started in the root: the node is started by hand, never by systemd.
  printf '#!/bin/sh\nexit 101\n' >"$building/usr/sbin/policy-rc.d"
  chmod 0755 "$building/usr/sbin/policy-rc.d"
  in_root "$building" "" env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -qq && apt-get install -y -qq --no-install-recommends rabbitmq-server && apt-get clean' \
    >>"$root.build.log" 2>&1 || {
    echo "broker: installing rabbitmq-server in the root failed; log: $root.build.log" >&2
    tail -n 20 "$root.build.log" >&2
    exit 1
  }
  assert_unmounted "$building"
  mv "$building" "$root"
  echo "broker: Debian 13 root built in $((SECONDS - started)) s" >&2
  exec 9>&-
}

# Runs a command chrooted into root $1 in a private mount namespace with /proc, /dev and, if $2
# is set, the host folder $2 at the same path: the mounts exist only for the processes in that
# namespace (the node and its children) and vanish with them, and the host never sees them.
in_root() {
  local dir=$1 shared=$2
  shift 2
  unshare --mount --propagation private sh -euc '
    dir=$1 shared=$2
    shift 2
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    if [ -n "$shared" ]; then
      mkdir -p "$dir$shared"
      mount --bind "$shared" "$dir$shared"
    fi
    exec chroot "$dir" "$@"
  ' sh "$dir" "$shared" "$@"
}

# Runs one of RabbitMQ's programs for this node with the environment it needs; further
# environment (NAME=value) may precede the program's name.
rabbit() {
  if [ "$version" = 3.10 ]; then
    env HOME="$home" "$@"
  else
    in_root "$root" "$home" env ERL_EPMD_PORT="$epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 HOME="$home" "$@"
  fi
}

ctl() { rabbit "$bin/rabbitmqctl" -n "$node" "$@"; }

case "$cmd" in
  start)
    port=${3:?port required}
    if [ "$version" = 3.10 ]; then
      ensure_installed
    else
      ensure_root
    fi
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
    rabbit \
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
    if [ "$version" != 3.10 ]; then
      assert_unmounted "$root"
    fi
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
    echo "broker: $node (RabbitMQ $version) running on 127.0.0.1:$port" >&2
    ;;
  stop)
    ctl stop >/dev/null 2>&1 || true
    if [ "$version" != 3.10 ]; then
      # The empty folder the node's state was mounted on inside the root (rmdir removes nothing
      # else, and nothing at all if it is not empty).
      rmdir "$root$home" 2>/dev/null || true
    fi
    ;;
  ctl)
    shift 2
    ctl "$@"
    ;;
  join)
    first=${3:?the name of the first node is required}
    # A node joins with its application stopped and its own data reset; its queues, if it
    # had any, are gone.
    ctl stop_app >/dev/null
    ctl reset >/dev/null
    ctl join_cluster "$first@localhost" >/dev/null
    ctl start_app >/dev/null
    ctl await_startup >/dev/null
    echo "broker: $node joined $first@localhost's cluster" >&2
    ;;
  kill)
    # The VM's own process id, as it reports it: nothing else is picked by name.
    pid=$(ctl eval 'os:getpid().' | tr -dc '0-9')
    if [ -z "$pid" ]; then
      echo "broker: $node reports no process id; is it running?" >&2
      exit 1
    fi
    kill -9 "$pid"
    # Gone, or a zombie nobody reaped yet: either way it holds no port any more.
    deadline=$((SECONDS + 10))
    while [ -n "$(ps -o stat= -p "$pid" | tr -d 'Z ')" ]; do
      if [ $SECONDS -ge $deadline ]; then
        echo "broker: $node (pid $pid) still runs 10 s after SIGKILL" >&2
        exit 1
      fi
      sleep 0.1
    done
    echo "broker: $node (pid $pid) killed" >&2
    ;;
  *)
    echo "broker.sh: unknown command '$cmd' (expected start, stop, ctl, join or kill)" >&2
    exit 2
    ;;
esac
