#!/usr/bin/env bash
# Makes the toolchain pinned in rust-toolchain.toml have exactly the targets
# and components that file lists. Current rustup installs a missing pinned
# toolchain with them, but adds nothing to one that is already installed
# (`rustup show` no longer does either), so a machine that already had the
# channel would build without the no_std and aarch64 targets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian 12's python3 has tomllib; a TOML parser beats grepping the file.
read_toolchain() {
    python3 - "$1" <<'PY'
import sys, tomllib
t = tomllib.load(open("rust-toolchain.toml", "rb"))["toolchain"]
print(" ".join(t.get(sys.argv[1], [])) if sys.argv[1] != "channel" else t["channel"])
PY
}
channel=$(read_toolchain channel)
targets=$(read_toolchain targets)
components=$(read_toolchain components)

# rustup 1.28+ no longer installs the pinned toolchain by itself on every
# command (and not at all with RUSTUP_AUTO_INSTALL=0): install it first.
# `rustup toolchain install` with no name reads rust-toolchain.toml.
if ! rustup show active-toolchain >/dev/null 2>&1; then
    rustup toolchain install
fi
# The full name (e.g. 1.95.0-x86_64-unknown-linux-gnu).
toolchain=$(rustup show active-toolchain | awk 'NR==1 {print $1}')
case "$toolchain" in
    "$channel"*) ;;
    *) echo "rust-toolchain.sh: the active toolchain is $toolchain, not the pinned $channel;" \
            "a RUSTUP_TOOLCHAIN or 'rustup override' takes precedence: unset it" >&2
       exit 1 ;;
esac

missing() { # $1: target|component; the rest: wanted names
    local kind=$1; shift
    local have
    have=$(rustup "$kind" list --installed --toolchain "$toolchain" 2>/dev/null || true)
    for name in "$@"; do
        # components are listed with the host triple appended (rustfmt-x86_64-...)
        grep -Eq "^${name}(-[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+.*)?$" <<<"$have" || echo "$name"
    done
}
# shellcheck disable=SC2086 # word splitting of the name lists is wanted
need_targets=$(missing target $targets)
# shellcheck disable=SC2086
need_components=$(missing component $components)
if [[ -z "$need_targets$need_components" ]]; then
    exit 0
fi
echo "==> adding to $toolchain: ${need_targets//$'\n'/ } ${need_components//$'\n'/ }"
fail() {
    echo "rust-toolchain.sh: rustup could not add $1 to $toolchain." >&2
    echo "  A linked or custom toolchain ('rustup toolchain link') cannot take components:" >&2
    echo "  install the pinned one with 'rustup toolchain install $channel' and unlink the other," >&2
    echo "  or add the standard libraries for: $2 by the means that toolchain came with." >&2
    exit 1
}
if [[ -n "$need_targets" ]]; then
    # shellcheck disable=SC2086
    rustup target add --toolchain "$toolchain" $need_targets || fail targets "$need_targets"
fi
if [[ -n "$need_components" ]]; then
    # shellcheck disable=SC2086
    rustup component add --toolchain "$toolchain" $need_components || fail components "$need_components"
fi
