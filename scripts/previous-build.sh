#!/usr/bin/env bash
# Builds the `gatehouse` binary of an earlier commit, once per machine, and
# prints its path: the "previous release" the upgrade test starts a cluster
# with and rolls from (node/tests/upgrade.rs). Only the binary is kept.
#
#   scripts/previous-build.sh <commit>
#
# RocksDB's C++ is taken from the warm target directory when it has been
# built there (ROCKSDB_LIB_DIR), so only the Rust crates compile again.
set -euo pipefail
commit=${1:?usage: scripts/previous-build.sh <commit>}
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
if ! commit=$(git -C "$root" rev-parse --verify --quiet "$commit^{commit}"); then
    echo "commit $1 is not in this clone (a shallow clone? git fetch --unshallow)" >&2
    exit 1
fi
cache=${GATEHOUSE_CACHE:-$HOME/.cache/gatehouse}/previous/$commit
out=$cache/gatehouse
if [ -x "$out" ]; then
    echo "$out"
    exit 0
fi
mkdir -p "${cache%/*}"
exec 9>"${cache%/*}.lock"
flock 9
if [ -x "$out" ]; then
    echo "$out"
    exit 0
fi
src=$cache/src
rm -rf "$src"
mkdir -p "$src"
git -C "$root" archive "$commit" | tar -x -C "$src"
target=${CARGO_TARGET_DIR:-$HOME/.cache/gatehouse/target}
# Only when that commit locks the same librocksdb-sys as this checkout,
# whose builds made the library (its C++ and bindings must match).
locked() { grep -A1 '^name = "librocksdb-sys"$' "$1" | sed -n 's/^version = "\(.*\)"$/\1/p'; }
lib=$(ls -t "$target"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -1 || true)
prebuilt=()
if [ -n "$lib" ] && [ "$(locked "$src/Cargo.lock")" = "$(locked "$root/Cargo.lock")" ]; then
    prebuilt=(ROCKSDB_LIB_DIR="$(dirname "$lib")" ROCKSDB_STATIC=1)
fi
echo "building gatehouse at ${commit:0:12} (once per machine) ..." >&2
(cd "$src" && env "${prebuilt[@]}" CARGO_TARGET_DIR="$cache/target" CARGO_INCREMENTAL=0 \
    cargo build --locked --bin gatehouse >&2)
cp "$cache/target/debug/gatehouse" "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$cache/target" "$src"
echo "$out"
