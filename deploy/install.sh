#!/usr/bin/env bash
# Installs one nearcache node as a systemd service:
#   - a system user and group `nearcache` (no login, home /var/lib/nearcache)
#   - the binary at /usr/local/bin/nearcache
#   - /etc/nearcache/nearcache.toml from deploy/nearcache.toml (kept if present; mode 0640,
#     group nearcache: it holds S3 secrets), data dir /var/lib/nearcache (0750)
#   - /etc/systemd/system/nearcache.service, enabled (started with --start)
#   - with --sysctl: /etc/sysctl.d/90-nearcache.conf (see deploy/TUNING.md)
#
#   cargo build --release && sudo deploy/install.sh [--binary PATH] [--sysctl] [--start]
#
# DESTDIR=/some/root stages every file there instead (no user, no systemctl): what
# tests/deploy.rs does, and what a package build would do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin="$here/../target/release/nearcache"
sysctl=no
start=no
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --sysctl) sysctl=yes; shift ;;
    --start) start=yes; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
root=${DESTDIR:-}
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (or set DESTDIR to stage the files)" >&2
  exit 1
fi
if [ ! -x "$bin" ]; then
  echo "install.sh: no binary at $bin: cargo build --release, or pass --binary PATH" >&2
  exit 1
fi

owner=()
if [ -z "$root" ]; then
  if ! getent group nearcache >/dev/null; then groupadd --system nearcache; fi
  if ! getent passwd nearcache >/dev/null; then
    useradd --system --gid nearcache --home-dir /var/lib/nearcache --no-create-home \
      --shell /usr/sbin/nologin --comment "nearcache service" nearcache
  fi
  owner=(-o nearcache -g nearcache)
fi

install -D -m 0755 "$bin" "$root/usr/local/bin/nearcache"
install -d -m 0750 "${owner[@]}" "$root/var/lib/nearcache"
install -d -m 0750 "$root/etc/nearcache"
conf="$root/etc/nearcache/nearcache.toml"
if [ -e "$conf" ]; then
  echo "keeping $conf"
else
  # The sample shows every default; the service keeps its data in /var/lib/nearcache.
  sed -e 's#^data_dir = .*#data_dir = "/var/lib/nearcache"#' "$here/nearcache.toml" > "$conf.tmp"
  mv "$conf.tmp" "$conf"
  chmod 0640 "$conf"
  if [ -z "$root" ]; then chgrp nearcache "$conf" "$root/etc/nearcache"; fi
  echo "wrote $conf: set [origin] (bucket, endpoint, keys) and [[s3api.keys]] before starting"
fi
install -D -m 0644 "$here/nearcache.service" "$root/etc/systemd/system/nearcache.service"
if [ "$sysctl" = yes ]; then
  install -D -m 0644 "$here/sysctl-nearcache.conf" "$root/etc/sysctl.d/90-nearcache.conf"
  if [ -z "$root" ]; then sysctl --system >/dev/null; fi
fi

if [ -z "$root" ]; then
  "$root/usr/local/bin/nearcache" config check "$conf" >/dev/null
  systemctl daemon-reload
  systemctl enable nearcache.service
  if [ "$start" = yes ]; then systemctl restart nearcache.service; fi
  echo "installed; start with: systemctl start nearcache; logs: journalctl -u nearcache -f"
fi
