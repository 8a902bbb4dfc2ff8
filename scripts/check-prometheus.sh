#!/usr/bin/env bash
# Checks the Prometheus kit in config/prometheus/: the scrape configuration and the alerting rules
# (`promtool check config`, `promtool check rules`) and the rules' unit tests (`promtool test
# rules`). Installs Debian's `prometheus` package for promtool when it is missing, without leaving
# a Prometheus server running. Exit status: promtool's (non-zero on the first failure).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "check-prometheus.sh: need root (or sudo) to run: $*" >&2; return 1; fi
}

# Stops and disables a Prometheus server the package may have started: this script wants only
# promtool, and a daemon on :9090 would be a surprise on a build machine.
stop_packaged_server() {
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  if [ -x /etc/init.d/prometheus ]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    command -v update-rc.d >/dev/null && as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
  if pgrep -x prometheus >/dev/null; then
    echo "check-prometheus.sh: a prometheus process is still running (pid $(pgrep -x prometheus | tr '\n' ' '))" >&2
    return 1
  fi
}

if ! command -v promtool >/dev/null; then
  echo "check-prometheus.sh: installing Debian's prometheus package for promtool"
  # Forbid service starts during the installation (policy-rc.d, as Debian's tools honour it),
  # unless the machine already has its own policy.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    own_policy=1
  fi
  status=0
  as_root apt-get update -qq || status=$?
  if [ "$status" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus >/dev/null || status=$?
  fi
  if [ "$own_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
  stop_packaged_server
fi

dir=config/prometheus
promtool --version 2>&1 | head -n 1
promtool check config "$dir/prometheus.yml"
promtool check rules "$dir/pushgate.rules.yml"
promtool test rules "$dir"/tests/*.test.yml
