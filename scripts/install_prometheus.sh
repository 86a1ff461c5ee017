#!/usr/bin/env bash
# Install the Prometheus server and promtool from Debian, for the observability tests.
# Idempotent: does nothing when both binaries are already on PATH. The Debian package's
# system service is never started here: tests start their own server on 127.0.0.1.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(command -v prometheus), $(command -v promtool)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101 tells invoke-rc.d not to start services during the install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update
apt-get install -y --no-install-recommends prometheus

command -v prometheus >/dev/null
command -v promtool >/dev/null
echo "installed: $(prometheus --version 2>&1 | sed -n 1p)"
