#!/usr/bin/env bash
# The main job on the local cluster, left running (stop with `make cluster-down`).
#
#   hack/demo.sh               control plane + kwok GPU nodes, the CRD, the operator as a
#                              local process, and examples/quickstart.yaml (pods are scheduled
#                              and tracked, not executed: kwok runs no containers)
#   hack/demo.sh --real-node   the same cluster plus one real node (containerd + runc): the
#                              images are built (buildah), `helm install` runs the operator in
#                              the cluster, and the quickstart trains for real on CPU, so
#                              `kubectl logs` and the PROGRESS column show something
set -euo pipefail
cd "$(dirname "$0")/.."
real_node=false
[[ ${1:-} == --real-node ]] && real_node=true

source hack/versions.env
cache=${TRAINOP_CACHE:-$HOME/.cache/trainop}
cluster=${TRAINOP_CLUSTER_DIR:-$cache/cluster}
tools="$cache/bin/kube-$K8S_VERSION:$cache/bin/helm-$HELM_VERSION"
# Our kubectl (the cluster's own version, no skew warning) and helm come first.
export PATH="$tools:$PATH"

up_args=()
$real_node && up_args+=(--real-node)
kubeconfig=$(python3 hack/localcluster.py up "${up_args[@]}" | awk -F= '/KUBECONFIG=/{print $2}')
export KUBECONFIG=$kubeconfig

fail() { # message, log file
  echo "demo: $1" >&2
  [[ -n ${2:-} && -f $2 ]] && { echo "--- last lines of $2" >&2; tail -n 30 "$2" >&2; }
  exit 1
}

if $real_node; then
  bash hack/images.sh build
  bash hack/images.sh load "$cluster/node/containerd/containerd.sock"
  helm upgrade --install trainop charts/trainop --namespace trainop-system --create-namespace \
    --set image.pullPolicy=Never \
    --set-string 'nodeSelector.trainop\.dev/real-node=true' \
    --set 'tolerations[0].key=trainop.dev/real-node,tolerations[0].operator=Exists' \
    --set 'progressReporter.bindings[0].namespace=default' >/dev/null
  kubectl -n trainop-system rollout status deployment/trainop --timeout=180s ||
    { kubectl -n trainop-system logs deployment/trainop --tail=30 >&2 || true; fail "the operator did not become ready"; }
  # The quickstart as it ships, on CPU and on the real node (it asks for a GPU).
  .venv/bin/python - <<'EOF' | kubectl apply -f -
import json, yaml
doc = yaml.safe_load(open("examples/quickstart.yaml"))
spec = doc["spec"]
spec["resources"] = {"gpus": 0}
spec["imagePullPolicy"] = "Never"
spec["scheduling"] = {
    "nodeSelector": {"trainop.dev/real-node": "true"},
    "tolerations": [{"key": "trainop.dev/real-node", "operator": "Exists"}],
}
print(json.dumps(doc))
EOF
  wait_for=Running
else
  kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
  # Polled: `kubectl wait` errors out while a new CRD has no conditions yet.
  for _ in $(seq 300); do
    [[ $(kubectl get crd trainingjobs.trainop.dev -o jsonpath='{.status.conditions[?(@.type=="Established")].status}') == True ]] && break
    sleep 0.2
  done
  log=$cluster/logs/operator.log
  # A free port on 127.0.0.1: never 0.0.0.0:8080, which another operator may hold.
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  TRAINOP_METRICS_ADDR=127.0.0.1 TRAINOP_METRICS_PORT=$port setsid .venv/bin/trainop operator >"$log" 2>&1 &
  echo $! > "$cluster/pids/operator.pid"
  # Alive and serving its metrics, or the demo stops here with the reason.
  for _ in $(seq 60); do
    kill -0 "$(cat "$cluster/pids/operator.pid")" 2>/dev/null || fail "the operator exited" "$log"
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/metrics', timeout=1)" 2>/dev/null && break
    sleep 0.5
  done
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/metrics', timeout=1)" 2>/dev/null ||
    fail "the operator is not serving http://127.0.0.1:$port/metrics after 30 s" "$log"
  kubectl apply -f examples/quickstart.yaml
  wait_for=Running
fi

for _ in $(seq 240); do
  phase=$(kubectl get tj quickstart -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ $phase == "$wait_for" ]] && break
  sleep 0.5
done
kubectl get tj,pods -o wide
echo
echo "export KUBECONFIG=$KUBECONFIG"
echo "export PATH=$tools:\$PATH"
if $real_node; then
  echo "Try: kubectl get tj -w; kubectl logs quickstart-worker-0 -c trainer -f"
else
  echo "operator metrics: http://127.0.0.1:$port/metrics (log: $log)"
  echo "kwok nodes run no containers: the pods are scheduled and tracked, not executed."
  echo "Try: kubectl scale tj/quickstart --replicas=3; kubectl annotate pod quickstart-worker-0 kwok.trainop.dev/exit-code=1"
fi
