#!/usr/bin/env bash
# Measures the device agent: stripped static aarch64 and x86_64 binary sizes,
# idle RSS/PSS with 20 deployments after 30 s, and KV put -> container start
# latency (p50/p99 over 50 updates), against a real nats-server and Podman.
#
#   scripts/bench-agent.sh                 # nats-server from PATH
#   NATS_SERVER_BIN=.venv/bin/nats-server scripts/bench-agent.sh
#
# Env: BENCH_UPDATES (50), BENCH_DEPLOYMENTS (20), BENCH_IDLE_SECS (30).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/h-agent}"
# ring's C code for aarch64-musl: the Debian cross gcc is enough (no libc needed).
export CC_aarch64_unknown_linux_musl="${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}"
export AR_aarch64_unknown_linux_musl="${AR_aarch64_unknown_linux_musl:-aarch64-linux-gnu-ar}"

cargo build -q -p agent-linux --release --target aarch64-unknown-linux-musl
cargo build -q -p agent-linux --release
arm="$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/iot-agent"
x86="$CARGO_TARGET_DIR/release/iot-agent"
size() { stat -c %s "$1"; }
echo "## iot-agent binary sizes (release profile: opt-level z, lto, strip)"
echo "| target | bytes | MiB | linkage |"
echo "|---|---|---|---|"
printf '| aarch64-unknown-linux-musl | %s | %.2f | %s |\n' "$(size "$arm")" \
  "$(echo "$(size "$arm") / 1048576" | bc -l)" "$(file -b "$arm" | grep -o 'statically linked\|dynamically linked')"
printf '| x86_64-unknown-linux-gnu | %s | %.2f | %s |\n' "$(size "$x86")" \
  "$(echo "$(size "$x86") / 1048576" | bc -l)" "$(file -b "$x86" | grep -o 'statically linked\|dynamically linked')"
if command -v qemu-aarch64-static >/dev/null; then
  echo
  echo "aarch64 under qemu: $(qemu-aarch64-static "$arm" --version)"
fi

CI="${CI:-true}" cargo bench -q -p agent-linux --bench footprint
