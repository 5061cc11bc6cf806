#!/usr/bin/env bash
# Installs webhookd's .deb into a Debian 12 root, boots a real systemd as PID 1 inside that root,
# and checks the service through `systemctl` there: start, the sandbox, reload, the watchdog
# through a broker outage, kill -9, a draining stop, a bad config, an upgrade and a purge.
#
#   scripts/systemd-test.sh [PATH.deb]    default: builds one with scripts/package.sh --debug
#
# Why a root of its own: systemd started as PID 1 takes over whatever root it sees (its tmpfiles
# setup alone empties /tmp). So it only ever runs pivoted into a Debian 12 root built once with
# debootstrap into .local/ (systemd and rabbitmq-server installed, about a minute) and copied
# afresh for each run, inside new PID, mount, network, UTS, IPC and cgroup namespaces: its
# broker, its webhookd and its loopback network are its own, every mount it has lives and dies
# with its mount namespace, and /proc/sys and /sys are read-only to it, so it cannot change the
# kernel's settings. Killing its PID 1 ends the whole run.
#
# Needs root, debootstrap (installed if missing) and Debian's mirror. Exits non-zero on the first
# check that fails, printing the root's journal. `systemctl status webhookd` from the last start
# is left in .local/systemd-test.status.txt.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
base=$repo/.local/debian12-systemd
run=$repo/.local/systemd-test
mirror=${WEBHOOKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
started=$SECONDS

say() { echo "systemd-test: $*" >&2; }
fail() {
  say "FAILED: $*"
  if [ -n "${pid1:-}" ]; then
    inside systemctl status --no-pager --lines=0 webhookd rabbitmq-server >&2 || true
    inside journalctl --no-pager -n 60 >&2 || true
  fi
  exit 1
}

if [ "$(id -u)" -ne 0 ]; then
  say "needs root (debootstrap, chroot, namespaces)"
  exit 1
fi

# Fails if anything is mounted at or under $1 in the host's namespace: such a folder is never
# deleted (rm would descend into the mount).
assert_unmounted() {
  if findmnt -rn -o TARGET | grep -qF "$1"; then
    say "something is mounted under $1 on the host; not touching it:"
    findmnt -rn -o TARGET | grep -F "$1" >&2
    exit 1
  fi
}

remove_tree() {
  [ -e "$1" ] || return 0
  assert_unmounted "$1"
  rm -rf --one-file-system "$1"
}

# Runs a command chrooted into root $1, with /proc and /dev, in a private mount namespace: the
# mounts vanish with the command and the host never sees them.
in_chroot() {
  local dir=$1
  shift
  unshare --mount --propagation private sh -euc '
    dir=$1
    shift
    mount -t proc proc "$dir/proc"
    mount --rbind /dev "$dir/dev"
    exec chroot "$dir" "$@"
  ' sh "$dir" "$@"
}

# The base root: Debian 12 with systemd and rabbitmq-server, built under a temporary name and
# renamed once complete, so an interrupted build is started again; a lock keeps two runs from
# building it at once.
ensure_base() {
  [ -x "$base/lib/systemd/systemd" ] && [ -x "$base/usr/lib/rabbitmq/bin/rabbitmq-server" ] && return
  mkdir -p "$(dirname "$base")"
  exec 9>"$base.lock"
  flock 9
  if [ -x "$base/lib/systemd/systemd" ] && [ -x "$base/usr/lib/rabbitmq/bin/rabbitmq-server" ]; then
    exec 9>&-
    return
  fi
  if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  local building=$base.building log=$base.build.log t0=$SECONDS
  remove_tree "$building"
  say "building a Debian 12 root with systemd and rabbitmq-server into $base (a few minutes, once)"
  mkdir -p "$building"
  unshare --mount --propagation private \
    debootstrap --variant=minbase bookworm "$building" "$mirror" >"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    fail "debootstrap failed; log: $log"
  }
  # Nothing starts while packages install: there is no running systemd yet, and this keeps any
  # maintainer script from trying to start a service on the host.
  printf '#!/bin/sh\nexit 101\n' >"$building/usr/sbin/policy-rc.d"
  chmod 0755 "$building/usr/sbin/policy-rc.d"
  in_chroot "$building" env DEBIAN_FRONTEND=noninteractive sh -ec '
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus rabbitmq-server curl
    apt-get clean' >>"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    fail "installing packages in the root failed; log: $log"
  }
  assert_unmounted "$building"
  mv "$building" "$base"
  say "Debian 12 root built in $((SECONDS - t0)) s"
  exec 9>&-
}

ensure_base

deb=${1:-}
if [ -z "$deb" ]; then
  deb=$(scripts/package.sh --debug | tail -n 1)
fi
[ -f "$deb" ] || fail "no package at $deb"

# A fresh copy of the base root for this run, the package installed into it as an operator would.
remove_tree "$run"
cp -a "$base" "$run"
cp "$deb" "$run/tmp/webhookd.deb"
in_chroot "$run" env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/webhookd.deb >"$run.install.log" 2>&1 ||
  { cat "$run.install.log" >&2; fail "dpkg -i"; }
rm "$run/tmp/webhookd.deb"
# From here on systemd runs inside, and services may start.
rm "$run/usr/sbin/policy-rc.d"
say "installed $(basename "$deb")"
# Units that would reach past the root to the kernel or the machine (sysctl, modules, clock,
# devices, kernel filesystems), or that have nothing to act on in a container: masked.
for unit in systemd-sysctl.service systemd-modules-load.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount systemd-timesyncd.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-hwdb-update.service systemd-random-seed.service \
  sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount \
  sys-fs-fuse-connections.mount dev-hugepages.mount getty@tty1.service console-getty.service \
  systemd-firstboot.service systemd-logind.service e2scrub_reap.service apt-daily.timer \
  apt-daily-upgrade.timer; do
  ln -sf /dev/null "$run/etc/systemd/system/$unit"
done
echo webhookd-systemd-test >"$run/etc/hostname"
printf '127.0.0.1 localhost webhookd-systemd-test\n::1 localhost\n' >"$run/etc/hosts"

# What the postinst left, checked before anything runs.
grep -q '^webhookd:x:[0-9]*:[0-9]*:webhookd daemon:/var/lib/webhookd:/usr/sbin/nologin$' "$run/etc/passwd" ||
  fail "postinst made no webhookd system user"
for secret in admin-token broker-url; do
  [ "$(stat -c '%a %U' "$run/etc/webhookd/$secret")" = "600 root" ] || fail "/etc/webhookd/$secret is not root's, mode 600"
done
[ -L "$run/etc/systemd/system/multi-user.target.wants/webhookd.service" ] || fail "webhookd.service is not enabled"
[ ! -e "$run/var/lib/webhookd" ] || fail "/var/lib/webhookd exists before StateDirectory= made it"

# Waits for the watchdog in seconds, not 30: the check is that pings go on while the broker is
# away, and a short interval shows that in a few seconds. Everything else is the shipped unit.
watchdog_sec=4
mkdir -p "$run/etc/systemd/system/webhookd.service.d"
printf '[Service]\nWatchdogSec=%ss\n' "$watchdog_sec" >"$run/etc/systemd/system/webhookd.service.d/test-watchdog.conf"

# The booted root's cgroup: a child of the host's unified hierarchy, which systemd sees as its
# whole tree (cgroup namespace), named for this checkout so two clones never share one.
cgroup=webhookd-systemd-test-$(printf %s "$repo" | md5sum | cut -c1-8)
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  cgroup=/sys/fs/cgroup/$cgroup
else
  cgroup=/sys/fs/cgroup/unified/$cgroup
fi

pid1=
cleanup() {
  if [ -n "$pid1" ] && kill -0 "$pid1" 2>/dev/null; then
    # PID 1 of the namespace: the kernel ends every process in it, and its mounts go with them.
    kill -KILL "$pid1" 2>/dev/null || true
    while kill -0 "$pid1" 2>/dev/null; do sleep 0.1; done
  fi
  if [ -d "$cgroup" ]; then
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
  fi
}
trap cleanup EXIT
cleanup
mkdir -p "$cgroup"

boot_log=$run.boot.log
# shellcheck disable=SC2016
sh -c 'echo $$ >"$1/cgroup.procs"; shift; exec "$@"' sh "$cgroup" \
  unshare --cgroup --pid --fork --mount --propagation private --net --uts --ipc sh -euc '
    dir=$1
    # The root a mount point of its own: systemd builds each service namespace from it.
    mount --bind "$dir" "$dir"
    mount -t proc proc "$dir/proc"
    # The kernel settings and the sysrq trigger stay out of reach: read-only.
    for path in sys sysrq-trigger; do
      [ -e "$dir/proc/$path" ] || continue
      mount --bind "$dir/proc/$path" "$dir/proc/$path"
      mount -o remount,bind,ro "$dir/proc/$path"
    done
    mount -t sysfs -o ro sysfs "$dir/sys"
    mount -t cgroup2 cgroup2 "$dir/sys/fs/cgroup"
    # A /dev of its own with the harmless devices only, as a container runtime gives.
    mount -t tmpfs -o mode=0755,nosuid dev "$dir/dev"
    for node in null zero full random urandom tty; do
      touch "$dir/dev/$node"
      mount --bind "/dev/$node" "$dir/dev/$node"
    done
    touch "$dir/dev/console"
    mount --bind /dev/null "$dir/dev/console"
    mkdir "$dir/dev/pts" "$dir/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$dir/dev/pts"
    ln -s pts/ptmx "$dir/dev/ptmx"
    ln -s /proc/self/fd "$dir/dev/fd"
    hostname webhookd-systemd-test
    # pivot_root, not chroot: the kernel refuses a chrooted process new user namespaces, which
    # PrivateUsers= in the unit needs. The host tree is then detached from this namespace.
    cd "$dir"
    mkdir -p .host
    pivot_root . .host
    umount -l /.host
    rmdir /.host
    # Shared propagation inside, as systemd expects of a container manager (it mounts the
    # credentials of each service from a namespace of their own): new peer groups of this
    # namespace, with no link to those of the host.
    mount --make-rshared /
    exec /usr/bin/env -i container=webhookd-systemd-test /lib/systemd/systemd --unit=multi-user.target
  ' sh "$run" >"$boot_log" 2>&1 &
launcher=$!

deadline=$((SECONDS + 30))
until [ -n "$pid1" ]; do
  pid1=$(pgrep -P "$launcher" || true)
  if [ $SECONDS -ge $deadline ] || ! kill -0 "$launcher" 2>/dev/null; then
    cat "$boot_log" >&2
    fail "systemd did not start; log: $boot_log"
  fi
  sleep 0.1
done

# Runs a command inside the booted root: its namespaces, its root directory.
inside() {
  nsenter --target "$pid1" --mount --uts --ipc --net --pid --cgroup --root --wd -- \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
prop() { inside systemctl show -p "$1" --value webhookd; }

# Polls "$@" until it succeeds, for at most $1 seconds.
wait_for() {
  local what=$1 limit=$2
  shift 2
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $until ] || fail "$what (waited ${limit} s)"
    sleep 0.2
  done
}
is_running() {
  local state
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  [ "$state" = running ] || [ "$state" = degraded ]
}
consuming() { [ "$(prop ActiveState)" = active ] && [ "$(prop StatusText)" = consuming ]; }
journal() { inside journalctl --no-pager -o cat -u webhookd "$@"; }
events() {
  inside curl -sf http://127.0.0.1:8089/metrics | awk '/^webhookd_events_total/ {n += $2} END {print n + 0}'
}
publish() { inside webhookd publish --sample message_created --account "$1" >/dev/null; }
# Predicates for wait_for.
events_above() { [ "$(events)" -gt "$1" ]; }
journal_has() {
  local text=$1
  shift
  journal "$@" | grep -q "$text"
}
prop_is() { [ "$(prop "$1")" = "$2" ]; }
prop_is_not() { [ "$(prop "$1")" != "$2" ]; }

wait_for "systemd booted" 120 is_running
say "booted in $((SECONDS - started)) s since the script started"
[ "$(inside systemctl is-system-running || true)" = running ] ||
  inside systemctl --failed --no-pager >&2

# 1. Enabled by the package, started at boot after rabbitmq-server: active, "consuming".
wait_for "webhookd active with status \"consuming\"" 30 consuming
[ "$(prop NRestarts)" = 0 ] || fail "webhookd restarted while starting"
say "ok: started at boot: active, status \"$(prop StatusText)\""

# 2. The sandbox: in a window where webhookd writes its store (a webhook added through the admin
# API), /etc, /home and /tmp of the root stay as they were, and only the state directory changes.
# The service's PrivateTmp= lives in /tmp/systemd-private-*: systemd's, and where its /tmp goes.
snapshot() {
  inside find /etc /home /tmp -path '/tmp/systemd-private-*' -prune -o -printf '%p %s %m %U %T@\n' | sort
}
before=$(snapshot)
token_env=WEBHOOKD_ADMIN__TOKEN_FILE=/etc/webhookd/admin-token
added=$(inside env "$token_env" webhookd webhooks add --account 1 --url http://127.0.0.1:9/hook 2>&1) ||
  fail "webhooks add through the admin API: $added"
[ "$(inside stat -c '%U %a' /var/lib/webhookd)" = "webhookd 700" ] || fail "state directory not webhookd's, 0700"
inside test -d /var/lib/webhookd/store || fail "no store in the state directory"
main=$(prop MainPID)
# Through the service's own mount namespace: what it can and cannot write.
for path in /etc/webhookd/probe /home/probe /usr/probe /var/lib/probe; do
  if inside nsenter --target "$main" --mount touch "$path" 2>/dev/null; then
    fail "the service can write $path"
  fi
done
inside nsenter --target "$main" --mount touch /var/lib/webhookd/probe || fail "the service cannot write its state directory"
inside nsenter --target "$main" --mount rm /var/lib/webhookd/probe
inside nsenter --target "$main" --mount touch /tmp/probe || fail "the service has no /tmp"
after=$(snapshot)
[ "$before" = "$after" ] || fail "webhookd changed /etc, /home or /tmp: $(diff <(echo "$before") <(echo "$after"))"
say "ok: sandbox: the store written in /var/lib/webhookd; /etc, /home, /usr, /var/lib read-only to it; the root's /etc, /home and /tmp untouched"

# 3. reload applies a new log level: at info an event without a webhook leaves no line; after
# `log.level = "debug"` and `systemctl reload`, the same event logs its debug line.
seen=$(events)
publish 2
wait_for "the first event consumed" 30 events_above "$seen"
if journal | grep -q "no matching webhook"; then fail "a debug line at level info"; fi
inside sed -i 's/^level = "info"$/level = "debug"/' /etc/webhookd/webhookd.toml
inside systemctl reload webhookd
wait_for "the reload logged" 30 journal_has "configuration reloaded"
seen=$(events)
publish 2
wait_for "the second event consumed" 30 events_above "$seen"
wait_for "a debug line after the reload" 10 journal_has "no matching webhook"
inside sed -i 's/^level = "debug"$/level = "info"/' /etc/webhookd/webhookd.toml
say "ok: reload: log.level debug applied without a restart (same MainPID $(prop MainPID))"

# 4. The watchdog through a broker outage: pings go on, nothing restarts.
main=$(prop MainPID)
inside systemctl stop rabbitmq-server
wait_for "webhookd saw the broker go" 30 prop_is_not StatusText consuming
ping=$(prop WatchdogTimestampMonotonic)
outage=$SECONDS
wait_for "a watchdog ping while the broker is down" 10 prop_is_not WatchdogTimestampMonotonic "$ping"
until [ $((SECONDS - outage)) -gt $((2 * watchdog_sec)) ]; do
  [ "$(prop MainPID)" = "$main" ] || fail "webhookd was restarted during the broker outage"
  sleep 0.5
done
[ "$(prop NRestarts)" = 0 ] || fail "NRestarts is $(prop NRestarts)"
say "ok: watchdog: $((SECONDS - outage)) s of broker outage (WatchdogSec=${watchdog_sec}s), status \"$(prop StatusText)\", same MainPID"
inside systemctl start rabbitmq-server
wait_for "webhookd consuming again after the broker came back" 120 consuming

# 5. kill -9 of the main process: systemd restarts it.
main=$(prop MainPID)
inside kill -9 "$main"
wait_for "a restart after kill -9" 60 prop_is NRestarts 1
wait_for "consuming after the restart" 60 consuming
[ "$(prop MainPID)" != "$main" ] || fail "the same MainPID after kill -9"
say "ok: kill -9 of $main: restarted as $(prop MainPID), consuming"

# 6. stop drains and exits 0.
inside systemctl stop webhookd
[ "$(prop Result)" = success ] || fail "stop: Result=$(prop Result)"
[ "$(prop ExecMainCode)" = 1 ] && [ "$(prop ExecMainStatus)" = 0 ] ||
  fail "stop: exit code $(prop ExecMainCode)/$(prop ExecMainStatus), expected exited/0"
# journald takes the service's last lines from its stream after the process has gone.
wait_for "the drain in the journal" 10 journal_has "stopping: draining"
say "ok: stop: drained, exited 0"

# 7. A bad config fails ExecStartPre, with the key named in the journal.
inside cp /etc/webhookd/webhookd.toml /root/webhookd.toml
inside sed -i 's/^\[broker\]$/[broker]\nexhange = "chatwoot.events"/' /etc/webhookd/webhookd.toml
cursor=$(inside journalctl --no-pager -n 0 --show-cursor | sed -n 's/^-- cursor: //p')
if inside systemctl start webhookd 2>/dev/null; then fail "started with a bad config"; fi
[ "$(prop Result)" = exit-code ] || fail "bad config: Result=$(prop Result)"
wait_for "ExecStartPre failing in the journal" 10 journal_has "Control process exited" --after-cursor="$cursor"
wait_for "the journal naming broker.exhange" 10 journal_has "broker.exhange" --after-cursor="$cursor"
say "ok: bad config: ExecStartPre failed: $(journal --after-cursor="$cursor" | grep -m1 'broker.exhange')"
inside cp /root/webhookd.toml /etc/webhookd/webhookd.toml
inside systemctl reset-failed webhookd

# 8. systemctl start, by hand: active, consuming.
inside systemctl start webhookd
wait_for "consuming after systemctl start" 60 consuming
say "ok: systemctl start: active, status \"$(prop StatusText)\""
inside systemctl status --no-pager --lines=5 webhookd >"$run.status.txt" || true
cat "$run.status.txt" >&2

# 9. An upgrade (the same package again): the running service restarts on the new files, and an
# operator's edit of the conffile stays.
main=$(prop MainPID)
inside sed -i 's/^prefetch = 256$/prefetch = 128/' /etc/webhookd/webhookd.toml
cp "$deb" "$run/root/webhookd.deb"
inside env DEBIAN_FRONTEND=noninteractive dpkg -i /root/webhookd.deb >/dev/null 2>&1 || fail "dpkg -i over the installed package"
wait_for "consuming after the upgrade" 60 consuming
[ "$(prop MainPID)" != "$main" ] || fail "the upgrade did not restart webhookd"
inside grep -q '^prefetch = 128$' /etc/webhookd/webhookd.toml || fail "the upgrade replaced the edited conffile"
wait_for "the restarted webhookd running the edited config" 10 journal_has "prefetch=128"
say "ok: upgrade: restarted ($main -> $(prop MainPID)), the edited conffile kept"

# 10. Purge: stops it, removes the config, the secrets and the store, keeps the user.
inside env DEBIAN_FRONTEND=noninteractive dpkg --purge webhookd >/dev/null 2>&1 || fail "dpkg --purge"
[ "$(inside systemctl is-active webhookd || true)" = inactive ] || fail "still running after purge"
for path in /etc/webhookd /var/lib/webhookd /usr/bin/webhookd /lib/systemd/system/webhookd.service; do
  if inside test -e "$path"; then fail "$path is left after purge"; fi
done
inside getent passwd webhookd >/dev/null || fail "purge removed the webhookd user"
say "ok: purge: stopped; /etc/webhookd, /var/lib/webhookd and the binary gone; the user kept"

cleanup
pid1=
remove_tree "$run"
say "all checks passed in $((SECONDS - started)) s"
