#!/usr/bin/env bash
# The main job on the local cluster: control plane + kwok GPU nodes, the CRD, the
# operator, and the quickstart TrainingJob. Leaves everything running; stop with
# `make cluster-down` (the operator stops with it).
set -euo pipefail
cd "$(dirname "$0")/.."
kubeconfig=$(python3 hack/localcluster.py up | awk -F= '/KUBECONFIG=/{print $2}')
export KUBECONFIG=$kubeconfig
source hack/versions.env
kubectl=${TRAINOP_CACHE:-$HOME/.cache/trainop}/bin/kube-$K8S_VERSION/kubectl
$kubectl apply --server-side -f crds/ >/dev/null
$kubectl wait --for=condition=Established crd/trainingjobs.trainop.dev >/dev/null
log=${TRAINOP_CLUSTER_DIR:-$HOME/.cache/trainop/cluster}/logs/operator.log
setsid .venv/bin/trainop operator >"$log" 2>&1 &
echo $! > "${TRAINOP_CLUSTER_DIR:-$HOME/.cache/trainop/cluster}/pids/operator.pid"
$kubectl apply -f examples/quickstart.yaml
for _ in $(seq 60); do
  phase=$($kubectl get tj quickstart -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [[ $phase == Running ]] && break
  sleep 0.5
done
$kubectl get tj,pods -o wide
echo
echo "export KUBECONFIG=$KUBECONFIG"
echo "kwok nodes run no containers: the pods are scheduled and tracked, not executed."
echo "Try: kubectl scale tj/quickstart --replicas=3; kubectl annotate pod quickstart-worker-0 kwok.trainop.dev/exit-code=1"
