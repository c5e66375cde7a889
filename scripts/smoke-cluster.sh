#!/usr/bin/env bash
# The operator's whole flow against a real Kubernetes cluster (k3d or kind):
# CRD admission rules, desired state written to NATS, status, finalizer
# cleanup. Needs: k3d or kind, kubectl, podman (or docker), cargo.
# Not run in CI here (no cluster); run it where one can be created:
#
#   scripts/smoke-cluster.sh            # creates and deletes cluster iot-smoke
#   KEEP=1 scripts/smoke-cluster.sh     # leaves the cluster up
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-iot-smoke}
NS=smoke
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=localhost/iot-operator:$VERSION
NATS_LOCAL_PORT=${NATS_LOCAL_PORT:-14222}
OPERATOR=target/smoke/iot-operator

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null || fail "$1 is not installed"; }

need kubectl
need cargo
if command -v k3d >/dev/null; then TOOL=k3d; elif command -v kind >/dev/null; then TOOL=kind; else fail "install k3d or kind"; fi
if command -v podman >/dev/null; then ENGINE=podman; else need docker; ENGINE=docker; fi

PF_PID=
cleanup() {
  [ -n "$PF_PID" ] && kill "$PF_PID" 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then
    say "deleting cluster $CLUSTER"
    if [ "$TOOL" = k3d ]; then k3d cluster delete "$CLUSTER" >/dev/null 2>&1 || true
    else kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  fi
}
trap cleanup EXIT

say "building the operator image ($IMAGE) and the CLI"
cargo xtask container-image operator
cargo build -q --release -p operator
mkdir -p target/smoke
cp "${CARGO_TARGET_DIR:-target}/release/iot-operator" "$OPERATOR"

say "creating $TOOL cluster $CLUSTER"
if [ "$TOOL" = k3d ]; then
  k3d cluster create "$CLUSTER" --wait
  $ENGINE save -o target/smoke/operator.tar "$IMAGE"
  k3d image import -c "$CLUSTER" target/smoke/operator.tar
else
  kind create cluster --name "$CLUSTER" --wait 120s
  $ENGINE save -o target/smoke/operator.tar "$IMAGE"
  kind load image-archive target/smoke/operator.tar --name "$CLUSTER"
fi

say "NATS, CRD and operator"
kubectl apply -f deploy/nats/nats.yaml
kubectl -n iot-system rollout status deploy/nats --timeout=180s
kubectl apply -f deploy/crd.yaml
kubectl wait --for=condition=Established crd/deployments.iot.nationtech.io --timeout=60s
kubectl apply -f deploy/operator.yaml
kubectl -n iot-system rollout status deploy/iot-operator --timeout=180s
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -

kubectl -n iot-system port-forward svc/nats "$NATS_LOCAL_PORT:4222" >/dev/null 2>&1 &
PF_PID=$!
export NATS_URL=nats://127.0.0.1:$NATS_LOCAL_PORT
for _ in $(seq 50); do "$OPERATOR" status >/dev/null 2>&1 && break; sleep 0.2; done

manifest() { # name type device
  cat <<YAML
apiVersion: iot.nationtech.io/v1alpha1
kind: Deployment
metadata: {name: "$1", namespace: $NS}
spec:
  targetDevices: ["$3"]
  score:
    type: "$2"
    data:
      containers: [{name: web, image: "docker.io/library/nginx:1.27"}]
YAML
}

say "the apiserver rejects bad input with the CRD's messages"
reject() { # expected-message manifest...
  local want=$1; shift
  local out
  if out=$(manifest "$@" | kubectl apply -f - 2>&1); then fail "accepted: $*"; fi
  grep -q -- "$want" <<<"$out" || fail "wrong message for $*: $out"
  echo "rejected as expected: $*"
}
reject "e.g. PodmanV0" web "has spaces" pi-001
reject "must be a single NATS key token" web.v1 PodmanV0 pi-001
reject "device ids are 1 to 63" web PodmanV0 'pi*'

say "apply -> desired state in NATS -> status"
manifest web PodmanV0 pi-001 | kubectl apply -f -
for _ in $(seq 100); do
  REV=$(kubectl -n $NS get iotdeploy web -o jsonpath='{.status.revision}')
  [ -n "$REV" ] && break; sleep 0.3
done
[ -n "$REV" ] || fail "status.revision never set"
echo "status.revision = $REV"
kubectl -n $NS get iotdeploy web -o jsonpath='{.status.observedScoreString}' | grep -q PodmanV0 \
  || fail "observedScoreString missing"
"$OPERATOR" status web | tee /dev/stderr | grep -q "web  *pi-001  *$REV" || fail "key not in NATS"
kubectl -n $NS get iotdeployments

say "delete -> finalizer removes the key"
kubectl -n $NS delete iotdeploy web --timeout=60s
if "$OPERATOR" status web | grep -q pi-001; then fail "key still in NATS after delete"; fi

say "PASS"
