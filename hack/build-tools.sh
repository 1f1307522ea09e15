#!/usr/bin/env bash
# Builds the control-plane binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and the kubelet of the real node, etcd, kwok, helm,
# CoreDNS (the real node's cluster DNS), Kueue, scheduler-plugins' gang scheduler and
# Volcano's PodGroup CRD (generated from volcano.sh/apis) from Go modules and caches each
# by version under $TRAINOP_CACHE (default ~/.cache/trainop). Nothing is fetched
# except through the Go module proxy; nothing is written into the repository.
# Usage: hack/build-tools.sh [kube|etcd|kwok|helm|coredns|kueue|scheduler-plugins|volcano-crds ...]
#        (default: all)
# Prints the bin directory of every tool on the last line as KEY=path pairs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache=${TRAINOP_CACHE:-$HOME/.cache/trainop}
mkdir -p "$cache/bin" "$cache/build"

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# A tool dir is complete only once its .done marker exists, so an interrupted
# build is redone instead of leaving a half-written binary in the cache.
# TRAINOP_PREFETCH=1 only downloads the modules of the tools that have a fetcher (the 4th
# argument) and builds nothing: make setup runs it beside the CPU-bound kube build, so their
# network-bound module resolution (minutes when cold) overlaps that compile.
done_or_build() { # name version builder [fetcher]
  local dir="$cache/bin/$1-$2"
  # A cache written by an older recipe (kube without kubelet) lacks a binary: rebuild it.
  if [[ -f "$dir/.done" ]] && all_present "$1" "$dir"; then log "$1 $2 cached at $dir"; return; fi
  if [[ -n ${TRAINOP_PREFETCH:-} ]]; then
    if [[ -n ${4:-} ]]; then
      local t0=$SECONDS
      "$4" "$2"
      log "$1 $2 modules fetched in $((SECONDS - t0)) s"
    fi
    return
  fi
  rm -rf "$dir"; mkdir -p "$dir"
  local t0=$SECONDS
  "$3" "$dir" "$2"
  echo "$((SECONDS - t0))" > "$dir/.build-seconds"
  touch "$dir/.done"
  log "$1 $2 built in $((SECONDS - t0)) s"
}

KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)

all_present() { # name dir
  [[ $1 == kube ]] || return 0
  local c
  for c in "${KUBE_CMDS[@]}"; do [[ -x "$2/$c" ]] || return 1; done
}

build_kube() { # dir version
  local dir=$1 v=$2 mod="$cache/build/kube-$2" minor
  minor=$(cut -d. -f2 <<<"$v")
  mkdir -p "$mod"; cd "$mod"
  # k8s.io/kubernetes replaces its staging modules with ./staging paths, which
  # `go install` refuses; a wrapper module pins each to its published v0.N.M twin.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module trainop.dev/build/kube"; echo; echo "go 1.24"; echo
    echo "require k8s.io/kubernetes $v"; echo
    grep -E '^\s*k8s.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v pv="v0.${v#v1.}" '{print "replace " $1 " => " $1 " " pv}'
  } > go.mod
  log "kube: $(grep -c '^replace' go.mod) staging modules pinned"
  local pkgs=() c
  for c in "${KUBE_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  go get "${pkgs[@]/%/@$v}" >&2
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  # One `go build` for all five shares the compile of their common packages.
  go build -tags selinux,notest -ldflags "$ld" -o "$dir/" "${pkgs[@]}"
}

build_etcd() {
  local dir=$1 v=$2 mod="$cache/build/etcd-$2"
  mkdir -p "$mod"; cd "$mod"
  printf 'module trainop.dev/build/etcd\n\ngo 1.24\n' > go.mod
  go get "go.etcd.io/etcd/server/v3@$v" >&2
  go build -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3
}

build_kwok() { GOBIN=$1 go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$2"; }
build_helm() { GOBIN=$1 go install -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$2"; }
# Its go.mod has no replace lines; the default plugin set includes kubernetes.
build_coredns() { GOBIN=$1 go install -ldflags "-s -w" "github.com/coredns/coredns@$2"; }
# No replace lines either. Its CRDs and webhook manifests are read from the module
# cache at test time (tests/cluster/kueue.py), never copied into the repository.
fetch_kueue() { # version: a throwaway module whose `go get` downloads Kueue's build list
  local mod="$cache/build/kueue-$1"
  mkdir -p "$mod"; cd "$mod"
  printf 'module trainop.dev/build/kueue\n\ngo 1.25\n' > go.mod
  go get "sigs.k8s.io/kueue/cmd/kueue@$1" >&2
}
build_kueue() { GOBIN=$1 go install -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$2"; }

# scheduler-plugins' go.mod pins every k8s.io module with replace lines (to v0.34.1),
# which `go install` refuses: a wrapper module re-pins them to K8S_VERSION's twins, so
# the k8s.io packages come from the kube build's compile cache (same tags).
fetch_scheduler_plugins() { # version
  local v=$1 mod="$cache/build/scheduler-plugins-$1"
  mkdir -p "$mod"; cd "$mod"
  local gomod
  gomod=$(go mod download -json "sigs.k8s.io/scheduler-plugins@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module trainop.dev/build/scheduler-plugins"; echo; echo "go 1.24"; echo
    echo "require sigs.k8s.io/scheduler-plugins $v"; echo
    grep -oE 'k8s.io/[a-z0-9-]+ => k8s.io/[a-z0-9-]+ v[0-9.]+' "$gomod" | sort -u | while read -r m _ _ pv; do
      case $m in
        k8s.io/kubernetes) echo "replace $m => $m $K8S_VERSION" ;;
        k8s.io/legacy-cloud-providers) echo "replace $m => $m $pv" ;;
        *) echo "replace $m => $m v0.${K8S_VERSION#v1.}" ;;
      esac
    done
  } > go.mod
  go get "sigs.k8s.io/scheduler-plugins/cmd/scheduler@$v" >&2
}
build_scheduler_plugins() { # dir version
  fetch_scheduler_plugins "$2"
  go build -tags selinux,notest -ldflags "-s -w" -o "$1/kube-scheduler-plugins" sigs.k8s.io/scheduler-plugins/cmd/scheduler
}

# Volcano's CRDs come from its own repository, which the module proxy here does not serve
# (volcano.sh/volcano: 403 for v1.13.0 and v1.14.0). Its types, with their kubebuilder
# markers, are in volcano.sh/apis: controller-gen makes the CRD from them with Volcano's
# own options (Makefile CRD_OPTIONS).
fetch_volcano_crds() { # apis-version
  local mod="$cache/build/volcano-crds-$1"
  mkdir -p "$mod"; cd "$mod"
  printf 'module trainop.dev/build/volcano-crds\n\ngo 1.24\n' > go.mod
  go get "volcano.sh/apis@$1" "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION" >&2
}
build_volcano_crds() { # dir apis-version
  local dir=$1 mod="$cache/build/volcano-crds-$2"
  fetch_volcano_crds "$2"
  go build -o "$mod/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen
  "$mod/controller-gen" crd:crdVersions=v1,allowDangerousTypes=true \
    paths=volcano.sh/apis/pkg/apis/scheduling/v1beta1 output:crd:dir="$dir"
}

# scheduler-plugins after kube: its k8s.io packages then come from kube's compile cache.
want=("$@"); [[ ${#want[@]} -gt 0 ]] || want=(kube etcd kwok helm coredns kueue volcano-crds scheduler-plugins)
for t in "${want[@]}"; do
  case $t in
    kube) done_or_build kube "$K8S_VERSION" build_kube ;;
    etcd) done_or_build etcd "$ETCD_VERSION" build_etcd ;;
    kwok) done_or_build kwok "$KWOK_VERSION" build_kwok ;;
    helm) done_or_build helm "$HELM_VERSION" build_helm ;;
    coredns) done_or_build coredns "$COREDNS_VERSION" build_coredns ;;
    kueue) done_or_build kueue "$KUEUE_VERSION" build_kueue fetch_kueue ;;
    scheduler-plugins) done_or_build scheduler-plugins "$SCHEDULER_PLUGINS_VERSION" build_scheduler_plugins fetch_scheduler_plugins ;;
    volcano-crds) done_or_build volcano-crds "$VOLCANO_APIS_VERSION" build_volcano_crds fetch_volcano_crds ;;
    *) echo "unknown tool: $t (expected kube, etcd, kwok, helm, coredns, kueue, scheduler-plugins or volcano-crds)" >&2; exit 2 ;;
  esac
done
echo "KUBE_BIN=$cache/bin/kube-$K8S_VERSION ETCD_BIN=$cache/bin/etcd-$ETCD_VERSION KWOK_BIN=$cache/bin/kwok-$KWOK_VERSION HELM_BIN=$cache/bin/helm-$HELM_VERSION COREDNS_BIN=$cache/bin/coredns-$COREDNS_VERSION KUEUE_BIN=$cache/bin/kueue-$KUEUE_VERSION SCHEDULER_PLUGINS_BIN=$cache/bin/scheduler-plugins-$SCHEDULER_PLUGINS_VERSION VOLCANO_CRDS=$cache/bin/volcano-crds-$VOLCANO_APIS_VERSION"
