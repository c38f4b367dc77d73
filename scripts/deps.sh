#!/usr/bin/env bash
# Installs the system packages Gatehouse needs, if missing: the build's
# (`scripts/deps.sh`) or the build's and the tests' (`scripts/deps.sh test`).
# Idempotent and quiet when everything is there; used by `make dev` and `make test`.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)   # RocksDB's bindgen
command -v c++ >/dev/null 2>&1 || need+=(g++)                   # RocksDB's C++ sources
if [ "${1:-}" = "test" ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)   # the forward-auth test
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required: install Rust (rustup) first" >&2; exit 1; }

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
