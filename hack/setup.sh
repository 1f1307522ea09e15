#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently:
#   Debian: prometheus (server + promtool), openssl
#   Go:     kube-apiserver & co, etcd, kwok, helm (hack/build-tools.sh, cached by version)
#   Python: .venv with trainop and its dev, train and gpu extras
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v openssl >/dev/null || need_apt+=(openssl)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  # The Debian prometheus package starts a service where systemd runs; we only need the binaries.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The Go builds and pip run side by side: the Go build is CPU-bound, pip mostly network.
bash hack/build-tools.sh > /dev/null &
build_pid=$!

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev,train,gpu]'

wait "$build_pid"
echo "setup done: tools in ${TRAINOP_CACHE:-$HOME/.cache/trainop}/bin, Python env in .venv"
