#!/usr/bin/env bash
# Puts the binaries of the real-API-server test tier where controller-runtime's
# envtest convention looks for them: `kube-apiserver` and `etcd` in the folder
# named by KUBEBUILDER_ASSETS (default: target/kube-assets).
#
# - kube-apiserver: unpacked from ../shared/kube/kube-apiserver-*.xz (beside
#   the repository), checked against that folder's SHA256SUMS.
# - etcd: a link to /usr/bin/etcd from Debian's etcd-server (installed when
#   missing and run as root; its systemd service is not used: the tests start
#   their own etcd on free ports with a temporary data dir).
#
# Elsewhere, envtest's own tool gives both binaries:
#   go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest
#   export KUBEBUILDER_ASSETS=$(setup-envtest use 1.36 -p path)
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

assets=${KUBEBUILDER_ASSETS:-$PWD/target/kube-assets}
shared=$(cd .. && pwd)/shared/kube
mkdir -p "$assets"

# --- kube-apiserver --------------------------------------------------------
# The shared binary's checksum, when there is one: a binary already in place
# is kept only if it is that one (a newer archive replaces it).
want=
if [[ -f $shared/SHA256SUMS ]]; then
    want=$(awk '$2 == "kube-apiserver" {print $1}' "$shared/SHA256SUMS")
fi
if [[ -x $assets/kube-apiserver ]] &&
    { [[ -z $want ]] || [[ $(sha256sum "$assets/kube-apiserver" | awk '{print $1}') == "$want" ]]; }; then
    :
elif [[ -d $shared ]]; then
    archive=$(find "$shared" -maxdepth 1 -name 'kube-apiserver-*-linux-amd64.xz' | sort | tail -n 1)
    if [[ -z $archive ]]; then
        echo "no kube-apiserver-*-linux-amd64.xz in $shared" >&2
        exit 1
    fi
    if [[ ! -f $shared/SHA256SUMS ]]; then
        echo "$shared/SHA256SUMS is missing: cannot check $archive" >&2
        exit 1
    fi
    echo "==> unpacking $(basename "$archive") into $assets"
    (cd "$shared" && grep -E "  $(basename "$archive")\$" SHA256SUMS | sha256sum -c --quiet -) || {
        echo "$archive does not match $shared/SHA256SUMS" >&2
        exit 1
    }
    tmp=$(mktemp "$assets/.kube-apiserver.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    xz -dc "$archive" >"$tmp"
    got=$(sha256sum "$tmp" | awk '{print $1}')
    if [[ -n $want && $want != "$got" ]]; then
        echo "unpacked kube-apiserver is $got, $shared/SHA256SUMS says $want" >&2
        exit 1
    fi
    chmod 755 "$tmp"
    mv "$tmp" "$assets/kube-apiserver"
    trap - EXIT
else
    cat >&2 <<EOF
kube-apiserver is missing: neither $assets/kube-apiserver nor $shared exists.
Get the binaries with controller-runtime's setup-envtest and point
KUBEBUILDER_ASSETS at them:
  go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest
  export KUBEBUILDER_ASSETS=\$(setup-envtest use 1.36 -p path)
EOF
    # Outside CI the real-API-server tests then skip (saying so), like any
    # test whose service is missing; under CI=true they must run.
    if [[ ${CI:-} == true ]]; then
        exit 1
    fi
    echo "kube-assets.sh: continuing without it; the kube-apiserver tests will skip" >&2
fi

# --- etcd ------------------------------------------------------------------
if [[ ! -x $assets/etcd ]]; then
    if [[ ! -x /usr/bin/etcd ]]; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "etcd is missing; run: sudo apt-get install -y etcd-server" >&2
            echo "(or put an etcd binary in $assets, e.g. from setup-envtest)" >&2
            exit 1
        fi
        echo "==> installing etcd-server (only its binary is used)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null ||
            { apt-get update -qq &&
              DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null; }
        # The package starts a system etcd on 2379 where systemd runs; the
        # tests need none (each starts its own), so the one we installed goes.
        if [[ -d /run/systemd/system ]]; then
            systemctl disable --now etcd.service >/dev/null 2>&1 || true
        fi
    fi
    ln -sfn /usr/bin/etcd "$assets/etcd"
fi

echo "==> kube test assets in $assets: $("$assets/kube-apiserver" --version), $("$assets/etcd" --version | head -n 1)"
