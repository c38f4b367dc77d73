# Gatehouse: the two commands a newcomer needs are `make dev` and `make test`.
# Both install missing system packages first (scripts/deps.sh).

# One warm target directory outside the clone, so RocksDB (about 12 minutes
# of C++) is compiled once per machine, not once per checkout.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/gatehouse/target
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/debug/gatehouse

.PHONY: deps dev build test verify fix chaos cluster-up cluster-down

deps:
	@scripts/deps.sh

## Run a dev node: data in ./gatehouse-data, prints a bootstrap admin key once.
# Built as the whole workspace (like `make test`), not `cargo run -p`: a
# one-package build unifies features differently and would compile RocksDB
# a second time.
dev: build
	$(BIN) serve --dev

build: deps
	$(CARGO) build --bins

# Lints never link. Check builds get their own librocksdb-sys build-script
# unit, which would compile RocksDB's C++ a second time (12 minutes); with
# ROCKSDB_LIB_DIR set, librocksdb-sys only generates bindings.
LINT_ENV := ROCKSDB_LIB_DIR=$(CARGO_TARGET_DIR)/no-link ROCKSDB_STATIC=1

## The whole gate: formatting, lints, and every test.
# Each code change leaves a ~500 MB debug test binary per test file behind,
# and incremental caches grow with every build: on a long-lived machine the
# warm target directory filled a 250 GB disk. So the gate builds without
# incremental caches and drops test executables unused for a day (cargo
# rebuilds any it still needs; libraries such as RocksDB stay).
test: export CARGO_INCREMENTAL = 0
test:
	@scripts/deps.sh test
	-find $(CARGO_TARGET_DIR)/debug/deps -maxdepth 1 -type f ! -name '*.*' -mtime +1 -delete 2>/dev/null
	rm -rf $(CARGO_TARGET_DIR)/debug/incremental
	$(CARGO) fmt --all --check
	mkdir -p $(CARGO_TARGET_DIR)/no-link
	$(LINT_ENV) $(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) build --bins
	$(CARGO) test --workspace --all-targets

verify: test

fix:
	$(CARGO) fmt --all
	mkdir -p $(CARGO_TARGET_DIR)/no-link
	$(LINT_ENV) $(CARGO) clippy --workspace --all-targets --fix --allow-dirty --allow-staged

## The long chaos runs (docs/chaos.md): every nemesis, several seeds, on
## 3 and then 5 nodes. `make test` runs the short set.
CHAOS_SEEDS ?= 3
CHAOS_SECONDS ?= 60
chaos: build
	$(CARGO_TARGET_DIR)/debug/gatehouse-chaos --nemesis all --nodes 3 --seeds $(CHAOS_SEEDS) --seconds $(CHAOS_SECONDS)
	$(CARGO_TARGET_DIR)/debug/gatehouse-chaos --nemesis all --nodes 5 --seeds 1 --seconds $(CHAOS_SECONDS)

## A local 3-node cluster of real processes (see deploy/local-cluster.sh).
cluster-up: build
	GATEHOUSE_BIN=$(BIN) deploy/local-cluster.sh up 3

cluster-down:
	deploy/local-cluster.sh down
