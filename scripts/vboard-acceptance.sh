#!/usr/bin/env bash
# The virtual-board acceptance test (issue 9), the second step of .ci/run.
# Installs what it needs on Debian 12 (as root), then runs the ignored test
# xtask/tests/vboard.rs: base image from Debian packages (mmdebstrap), boot
# of `vboard-1` under qemu-system-aarch64, heartbeat, apply/update/delete,
# clean power-off, offline reboot from the agent's cache.
#
# Cold (no target/vboard/rootfs-virt-*.tar) = mmdebstrap + warm; timings and
# peak disk use are in xtask/README.md. The console log stays in
# target/vboard/acceptance/boards/vboard-1/console.log, board-sim's logs in
# target/vboard/acceptance/*.log; .ci/run prints their tails on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
    for t in mkfs.fat:dosfstools mcopy:mtools mke2fs:e2fsprogs sfdisk:fdisk nats-server:nats-server; do
        command -v "${t%%:*}" >/dev/null || need+=("${t#*:}")
    done
    need_qemu=
    command -v qemu-system-aarch64 >/dev/null || need_qemu=1
    if [ "${#need[@]}" -gt 0 ] || [ -n "$need_qemu" ]; then
        # Before any version lookup: a fresh machine may have no lists.
        apt-get update -qq
    fi
    if [ -n "$need_qemu" ]; then
        # Debian's qemu-system-arm must come with qemu-utils of the same
        # version: a newer qemu-utils (e.g. 10.0 from bookworm-backports,
        # preinstalled on CI machines) makes apt remove qemu-img instead.
        # Pin all four to the suite's qemu-system-arm (downgrading qemu-utils).
        v=$(apt-cache policy qemu-system-arm | awk '/Candidate:/ {print $2}')
        if [ -z "$v" ] || [ "$v" = "(none)" ]; then
            echo "vboard: apt knows no qemu-system-arm; check /etc/apt/sources.list*" >&2
            exit 1
        fi
        need+=("qemu-system-arm=$v" "qemu-system-common=$v" "qemu-utils=$v"
               "qemu-system-data=${v%+b*}")
    fi
    if [ "${#need[@]}" -gt 0 ]; then
        # Without recommends, so no ipxe-qemu: board-sim's NIC needs no
        # option ROM (`romfile=`, the board boots its kernel directly).
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            --allow-downgrades "${need[@]}"
    fi
    # binfmt_misc is not mounted where PID 1 is not systemd.
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
    qemu-system-aarch64 --version | head -n 1
    qemu-img --version | head -n 1
fi

export CI="${CI:-true}"
# As scripts/test.sh: a different setting would rebuild the workspace.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
start=$(date +%s)
# Build with the workspace's feature set, as scripts/test.sh does (`cargo
# test --workspace`): after it this is a no-op. `-p xtask` or `cargo build
# -p operator` would resolve features differently and rebuild most
# dependencies (minutes on 2 cores).
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$PWD/$target" ;; esac
cargo test --workspace --locked --no-run
export IOT_OPERATOR_BIN="${IOT_OPERATOR_BIN:-$target/debug/iot-operator}"
echo "vboard: build $(( $(date +%s) - start )) s; operator $IOT_OPERATOR_BIN"
cargo test --workspace --locked --test vboard -- --ignored --nocapture
echo "vboard acceptance: $(( $(date +%s) - start )) s"
