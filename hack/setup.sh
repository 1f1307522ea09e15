#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently:
#   Debian: prometheus (server + promtool), openssl, tmux; for the images and the real node:
#           buildah, debootstrap, containerd, runc, CNI plugins, iptables, iproute2, gcc
#   Go:     kube-apiserver & co, the kubelet, etcd, kwok, helm, CoreDNS, Kueue,
#           scheduler-plugins (a gang scheduler), Volcano's PodGroup CRD
#           (hack/build-tools.sh, cached by version)
#   Images: the stand-in bases the Dockerfiles build FROM (hack/images.sh bases, cached
#           in buildah's storage), since the official ones cannot be pulled here
#   Python: .venv with trainop (dev, train, gpu extras) and trainop-runtime (trainer-image/)
#
# `hack/setup.sh python` does only the Python env (what `make run` needs).
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-all}

# Each step says what it does and how long it may take: a fresh machine spends minutes
# in pip (torch alone is ~800 MB), and a silent terminal looks hung.
started=$SECONDS
say() { printf '[setup %3ds] %s\n' "$((SECONDS - started))" "$*"; }

python_env() {
  # Skipped while .venv is newer than both projects' metadata: `make run` and `make test`
  # set up first, and a second pip resolve would cost ~30 s of every run.
  stamp=.venv/.trainop-installed
  if [[ -f $stamp && $stamp -nt pyproject.toml && $stamp -nt trainer-image/pyproject.toml ]]; then
    say "Python env: up to date (.venv)"
    return
  fi
  if [[ ! -x .venv/bin/python ]]; then
    say "Python env: creating .venv"
    python3 -m venv .venv
  fi
  pip_log=${TRAINOP_CACHE:-$HOME/.cache/trainop}/pip.log
  mkdir -p "$(dirname "$pip_log")"
  say "Python env: installing trainop, trainop-runtime and torch into .venv" \
    "(minutes on a fresh machine; full log: $pip_log)"
  # pip's own output is hundreds of lines; one line per package fetched or installed
  # shows it moving. pipefail keeps pip's exit status.
  pip_progress() {
    tee -a "$pip_log" | awk '/^ *(Collecting|Downloading|Installing collected|Successfully installed)/ {
      sub(/^ +/, ""); print "  pip: " substr($0, 1, 110); fflush() }'
  }
  : > "$pip_log"
  .venv/bin/pip install --progress-bar off --upgrade pip 2>&1 | pip_progress
  .venv/bin/pip install --progress-bar off -e './trainer-image[train,gpu]' -e '.[dev,train,gpu]' \
    2>&1 | pip_progress
  touch "$stamp"
  say "Python env: ready"
}

if [[ $only == python ]]; then
  python_env
  exit 0
fi

need_apt=()
want() { command -v "$1" >/dev/null || need_apt+=("$2"); }
want prometheus prometheus
want promtool prometheus
want openssl openssl
want buildah buildah
want debootstrap debootstrap
want containerd containerd
want runc runc
want iptables iptables
want ip iproute2
want gcc gcc
want tmux tmux  # the terminal the runner display test draws on
[[ -x /usr/lib/cni/bridge ]] || need_apt+=(containernetworking-plugins)
# gcc -static needs libc.a.
[[ -f /usr/lib/x86_64-linux-gnu/libc.a || -f /usr/lib/aarch64-linux-gnu/libc.a ]] || need_apt+=(libc6-dev)
if [[ ${#need_apt[@]} -gt 0 ]]; then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  say "Debian packages: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  # The Debian prometheus and containerd packages start services where systemd runs;
  # we only need the binaries (this machine has no systemd).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# The Go builds, the image bases and pip run side by side: the Go build is CPU-bound,
# the other two mostly network.
cache=${TRAINOP_CACHE:-$HOME/.cache/trainop}
mkdir -p "$cache"
say "Go tools (kube-apiserver, kubelet, etcd, kwok, helm, Kueue...): building in the background," \
  "cached in $cache/bin (a first build takes minutes, later runs seconds)"
bash hack/build-tools.sh > /dev/null &
build_pid=$!
# The add-ons (Kueue, the gang scheduler, Volcano's CRD) are built last, from modules
# fetched meanwhile: their module resolution is network-bound (scheduler-plugins' took
# 562 s from an empty module cache), the kube build CPU-bound.
prefetch_log=$cache/prefetch.log
TRAINOP_PREFETCH=1 bash hack/build-tools.sh kueue volcano-crds scheduler-plugins > "$prefetch_log" 2>&1 &
prefetch_pid=$!
bases_log=$cache/images-bases.log
say "image bases: preparing in the background (log: $bases_log)"
bash hack/images.sh bases > "$bases_log" 2>&1 &
bases_pid=$!

python_env

say "waiting for the Go tools build"
wait "$build_pid"
# Only a head start: the build fetches whatever it did not.
wait "$prefetch_pid" || say "module prefetch failed (see $prefetch_log); the build fetched them itself"
say "Go tools: ready"
wait "$bases_pid" || { tail -n 40 "$bases_log" >&2; exit 1; }
say "image bases: ready"
say "setup done: tools in ${TRAINOP_CACHE:-$HOME/.cache/trainop}/bin, image bases in buildah's storage, Python env in .venv"
