#!/usr/bin/env bash
# Builds trainop's two images without a daemon: buildah, --pull=never, chroot isolation.
#
#   hack/images.sh bases            # the stand-in bases, if missing (make setup)
#   hack/images.sh build            # stand-in bases if missing, then both images
#   hack/images.sh load SOCKET      # both images into a containerd (the real node's), streamed
#   hack/images.sh names            # operator, trainer, then the two bases, one per line
#
# The real bases are the official ones the Dockerfiles name (python:3.12-slim-bookworm,
# pytorch/pytorch:...). This machine cannot pull them, so it makes stand-ins from Debian
# packages and PyPI and tags them with exactly the FROM names:
#   - python: a debootstrap bookworm minbase with Debian's Python as a venv at /usr/local
#     (python, pip and site-packages where the official image has them);
#   - pytorch: that plus torch from PyPI, and a user with uid 1000 as Ubuntu-based bases
#     have, so the trainer Dockerfile is built against the uid clash it must survive.
# Stand-ins are cached in buildah's storage, keyed by their recipe (STANDIN_RECIPE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export BUILDAH_ISOLATION=chroot
log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# Bump when a stand-in's recipe changes: images whose label differs are rebuilt.
STANDIN_RECIPE=1
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -1)
OPERATOR_IMAGE=ghcr.io/trainop/trainop:$TAG
TRAINER_IMAGE=ghcr.io/trainop/trainer:$TAG

# A short name as buildah resolves it with --pull=never: docker.io, library/ for one segment.
qualify() {
  local n=$1
  [[ $n == */* ]] || n="library/$n"
  [[ ${n%%/*} == *.* ]] || n="docker.io/$n"
  echo "$n"
}
PY_BASE=$(qualify "$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$root/Dockerfile")")
TORCH_BASE=$(qualify "$(sed -n 's/^ARG BASE=//p' "$root/trainer-image/Dockerfile")")
# The torch release the official tag names (pytorch/pytorch:2.15.0-cuda...): the stand-in matches it.
TORCH_VERSION=${TORCH_BASE##*:}
TORCH_VERSION=${TORCH_VERSION%%-*}

have_standin() { # name
  [[ $(buildah inspect --type image --format '{{index .ImageAnnotations "trainop.dev/standin-recipe"}}' "$1" 2>/dev/null) == "$STANDIN_RECIPE" ]]
}

debian_mirror() {
  # The mirror apt already uses here: nothing else is reachable.
  local m
  m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -1)
  [[ -n $m ]] || m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  echo "$m"
}

python_standin() {
  log "stand-in $PY_BASE: debootstrap bookworm minbase + Debian Python as /usr/local"
  local c mnt
  c=$(buildah from scratch)
  mnt=$(buildah mount "$c")
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$mnt" "$(debian_mirror)" >&2
  # python, python3 and pip in /usr/local/bin, packages in /usr/local/lib/python3.X/site-packages.
  chroot "$mnt" /usr/bin/python3 -m venv /usr/local
  # pip in a RUN step reaches PyPI as the host's pip does: the host's CA bundle and its
  # use by pip (a venv's pip otherwise trusts only its vendored certifi). Stand-in only.
  cp /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$mnt/etc/pip.conf"
  rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/*.bin "$mnt"/var/cache/apt/archives/*.deb
  buildah unmount "$c" >/dev/null
  buildah config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 \
    --annotation trainop.dev/standin-recipe=$STANDIN_RECIPE "$c"
  buildah commit --rm "$c" "$PY_BASE" >/dev/null
}

torch_standin() {
  log "stand-in $TORCH_BASE: $PY_BASE + torch from PyPI + a uid-1000 user"
  local c cache
  c=$(buildah from --pull=never "$PY_BASE")
  # A pip cache outside the repo: torch and its CUDA libraries are gigabytes, downloaded once.
  cache=${TRAINOP_CACHE:-$HOME/.cache/trainop}/pip
  mkdir -p "$cache"
  buildah run -v "$cache:/root/.cache/pip" "$c" -- python -m pip install -q "torch==$TORCH_VERSION" numpy
  buildah run "$c" -- useradd --uid 1000 --create-home --shell /bin/bash ubuntu
  buildah config --annotation trainop.dev/standin-recipe=$STANDIN_RECIPE "$c"
  buildah commit --rm "$c" "$TORCH_BASE" >/dev/null
}

bases() {
  have_standin "$PY_BASE" || python_standin
  have_standin "$TORCH_BASE" || torch_standin
}

build() {
  bases
  log "building $OPERATOR_IMAGE"
  buildah bud --pull=never --layers -t "$OPERATOR_IMAGE" -f "$root/Dockerfile" "$root" >&2
  log "building $TRAINER_IMAGE"
  buildah bud --pull=never --layers -t "$TRAINER_IMAGE" -f "$root/trainer-image/Dockerfile" "$root" >&2
  local img
  for img in "$OPERATOR_IMAGE" "$TRAINER_IMAGE"; do
    buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$img" >&2
  done
}

load() { # containerd socket
  # Streamed: buildah writes the docker-archive to the pipe while ctr unpacks it, so no
  # multi-gigabyte tar is written and the two overlap.
  local img
  for img in "$OPERATOR_IMAGE" "$TRAINER_IMAGE"; do
    log "loading $img into $1"
    buildah push --quiet "$img" "docker-archive:/dev/stdout:$img" |
      ctr --address "$1" --namespace k8s.io images import - >&2
  done
}

case ${1:-build} in
  bases) bases ;;
  build) build ;;
  load) load "${2:?usage: hack/images.sh load CONTAINERD_SOCKET}" ;;
  names) printf '%s\n' "$OPERATOR_IMAGE" "$TRAINER_IMAGE" "$PY_BASE" "$TORCH_BASE" ;;
  *) echo "usage: hack/images.sh [bases|build|load SOCKET|names]" >&2; exit 2 ;;
esac
