#!/usr/bin/env bash
# Builds webhookd's Debian package: target/debian/webhookd_<version>_amd64.deb (under
# $CARGO_TARGET_DIR if that is set).
#
#   scripts/package.sh           from a release build
#   scripts/package.sh --debug   from the debug build (what scripts/systemd-test.sh installs:
#                                CI has it already built, and the behaviour under test is the same)
#
# Plain dpkg-deb, no cargo-deb: nothing to install first, and every file the package holds is
# named here. What it installs:
#   /usr/bin/webhookd
#   /lib/systemd/system/webhookd.service      systemd/webhookd.service (Debian 12 keeps units
#                                             under /lib; /lib is /usr/lib there)
#   /etc/webhookd/webhookd.toml               config/webhookd.toml, a conffile: dpkg keeps an
#                                             operator's edits across upgrades
#   /usr/share/man/man1/webhookd*.1.gz        generated from the command-line grammar
#   /usr/share/{bash-completion,zsh,fish}/... completions, generated likewise
#   /usr/share/doc/webhookd/copyright         LICENSE
# and packaging/deb/{postinst,prerm,postrm}: the webhookd user and the unit's enablement. The
# store's directory is the unit's StateDirectory=, made by systemd at the first start.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
case "${1:-}" in
  "") ;;
  --debug) profile=debug ;;
  *)
    echo "package.sh: unknown argument '$1' (expected nothing or --debug)" >&2
    exit 2
    ;;
esac

target=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
out=$target/debian
stage=$out/webhookd_${version}_$arch
deb=$stage.deb

cargo_profile=()
[ "$profile" = debug ] || cargo_profile=(--release)
cargo build --locked "${cargo_profile[@]}" --bin webhookd --example package-assets
bin=$target/$profile/webhookd

rm -rf "$stage"
install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/webhookd" \
  "$stage/usr/share/man/man1" "$stage/usr/share/doc/webhookd" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"

# Debian ships binaries stripped of debug information.
install -m 0755 "$bin" "$stage/usr/bin/webhookd"
strip --strip-unneeded "$stage/usr/bin/webhookd"
install -m 0644 systemd/webhookd.service "$stage/lib/systemd/system/webhookd.service"
install -m 0644 config/webhookd.toml "$stage/etc/webhookd/webhookd.toml"
install -m 0644 LICENSE "$stage/usr/share/doc/webhookd/copyright"

assets=$(mktemp -d)
trap 'rm -rf "$assets"' EXIT
"$target/$profile/examples/package-assets" "$assets"
for page in "$assets"/man/*.1; do
  gzip -9n <"$page" >"$stage/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$assets/completions/webhookd.bash" "$stage/usr/share/bash-completion/completions/webhookd"
install -m 0644 "$assets/completions/_webhookd" "$stage/usr/share/zsh/vendor-completions/_webhookd"
install -m 0644 "$assets/completions/webhookd.fish" "$stage/usr/share/fish/vendor_completions.d/webhookd.fish"
chmod 0644 "$stage"/usr/share/man/man1/*

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$stage/DEBIAN/"
echo /etc/webhookd/webhookd.toml >"$stage/DEBIAN/conffiles"

# The Depends line below covers these libraries and no others.
unexpected=$(objdump -p "$stage/usr/bin/webhookd" | awk '/NEEDED/ {print $2}' |
  grep -vxE 'libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|ld-linux-x86-64\.so\.2' || true)
if [ -n "$unexpected" ]; then
  echo "package.sh: the binary needs libraries the Depends line does not name: $unexpected" >&2
  exit 1
fi
# The newest glibc symbol version the binary links against is the libc it needs.
glibc=$(objdump -T "$stage/usr/bin/webhookd" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
cat >"$stage/DEBIAN/control" <<EOF
Package: webhookd
Version: $version
Architecture: $arch
Maintainer: The webhookd authors <webhookd@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: libc6 (>= $glibc), libgcc-s1, passwd
Recommends: rabbitmq-server
Section: net
Priority: optional
Description: delivers account events from RabbitMQ to webhooks
 webhookd consumes the events an application publishes to a RabbitMQ
 exchange and POSTs each to every matching webhook of the account, signed.
 Failures are retried on an exponential schedule that waits in the broker;
 what cannot be delivered is parked in a dead-letter queue with its reason.
 .
 The package installs a hardened systemd unit (Type=notify, watchdog,
 sandboxed), a documented configuration file, a man page and completions.
EOF
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"

# xz, Debian's default, for a release; the debug package is a test artifact, and gzip builds it in
# a second where xz takes most of a minute.
compression=xz
[ "$profile" = release ] || compression=gzip
dpkg-deb --root-owner-group -Z"$compression" --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "$deb"
