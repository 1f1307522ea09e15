#!/usr/bin/env bash
# Builds Kubeflow's training operator (the v1 operator, PyTorchJob and friends) with
# `go install` from the Go module proxy and caches it by version under $TRAINOP_CACHE
# (default ~/.cache/trainop), the way hack/build-tools.sh caches the control plane.
# Its go.mod has no replace lines, so no wrapper module is needed.
# Usage: bench/compare-kubeflow/build.sh
# Prints, on the last line, KUBEFLOW_BIN=<dir with training-operator.v1> KUBEFLOW_SRC=<module dir>
# (the module's source, whose manifests/base/crds hold the CRDs the benchmark applies).
set -euo pipefail
KUBEFLOW_VERSION=${KUBEFLOW_VERSION:-v1.9.2}
MODULE=github.com/kubeflow/training-operator
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache=${TRAINOP_CACHE:-$HOME/.cache/trainop}
dir="$cache/bin/kubeflow-training-operator-$KUBEFLOW_VERSION"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
log() { printf '[compare-kubeflow build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# A tool dir is complete only once its .done marker exists, so an interrupted
# build is redone instead of leaving a half-written binary in the cache.
if [[ -f "$dir/.done" && -x "$dir/training-operator.v1" ]]; then
  log "training-operator $KUBEFLOW_VERSION cached at $dir"
else
  rm -rf "$dir"; mkdir -p "$dir"
  t0=$SECONDS
  # From a scratch dir: no go.mod around us may change what is built.
  (cd "$scratch" && GOBIN="$dir" go install -ldflags "-s -w" "$MODULE/cmd/training-operator.v1@$KUBEFLOW_VERSION")
  echo "$((SECONDS - t0))" > "$dir/.build-seconds"
  touch "$dir/.done"
  log "training-operator $KUBEFLOW_VERSION built in $((SECONDS - t0)) s"
fi
src=$(cd "$scratch" && go mod download -json "$MODULE@$KUBEFLOW_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
echo "KUBEFLOW_BIN=$dir KUBEFLOW_SRC=$src"
