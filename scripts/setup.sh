#!/usr/bin/env bash
# Idempotent set-up for a Debian 12 (or Ubuntu 22.04+) machine, as root:
# system packages, a virtualenv in .venv, and bpfscope installed into it.
# Fast when already done: it checks before it installs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-stamp"

# What bpfscope and its tests need from the distribution:
#  libbpf1          the runtime library bpfscope binds to
#  clang llvm make libbpf-dev linux-libc-dev bpftool   rebuild/check BPF objects
#  gcc libc6-dev    the overhead lab's driver; header layout tests
#  bpftrace         the peer the benchmarks compare against
#  iproute2 nftables util-linux   network namespaces, packet drops, setpriv/unshare
#  libcap2-bin      capsh for least-privilege runs
#  linux-libc-dev-arm64-cross     arm64 syscall numbers for the table check
#  qemu-system-x86 busybox-static the kernel matrix (matrix/run): other kernels in qemu
#  qemu-system-arm qemu-user-static debootstrap debian-archive-keyring
#                                 its arm64 guests: qemu-system-aarch64 (the kernel
#                                 boots directly, no UEFI firmware), and the
#                                 Debian arm64 root matrix/run debootstraps once
#                                 (second stage through qemu-user and binfmt_misc)
#  chromium chromium-driver        the web view's browser tests (Selenium)
#  prometheus                     evaluates the Grafana dashboards' queries in tests
#  nginx-light wrk                the agent's connection-churn bench (bench agent --churn)
# The container image test (tests/kernel/test_container_image.py) installs
# what only it needs, docker.io, debootstrap and prometheus, through
# scripts/container-engine when it runs as root, not here for everyone.
PACKAGES=(
  python3 python3-venv python3-dev
  libbpf1 libbpf-dev clang llvm make bpftool gcc libc6-dev linux-libc-dev
  bpftrace iproute2 nftables util-linux libcap2-bin procps
  linux-libc-dev-arm64-cross
  qemu-system-x86 busybox-static
  qemu-system-arm qemu-user-static debootstrap debian-archive-keyring
  chromium chromium-driver prometheus
  nginx-light wrk
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own Python 3.11, so that the venv matches a fresh machine.
PY=/usr/bin/python3
want=$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating virtualenv and installing bpfscope" >&2
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! { "$PY" -m venv "$VENV" && "$VENV/bin/pip" install -q -e "$ROOT[dev]"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (output above)" >&2
    exit 1
  fi
  echo "$want" > "$STAMP"
fi
