#!/usr/bin/env bash
# A local Gatehouse cluster of real processes on loopback.
#
#   deploy/local-cluster.sh up [N]   start N nodes (default 3) under ./local-cluster/
#   deploy/local-cluster.sh down     stop them (SIGTERM; data is kept)
#   deploy/local-cluster.sh clean    stop them and delete ./local-cluster/
#
# `up` waits until the cluster has a leader, then writes ./local-cluster/cluster.env:
#   GATEHOUSE_ENDPOINT, GATEHOUSE_TOKEN (the bootstrap admin key), and for each
#   node i: GATEHOUSE_HTTP_i, GATEHOUSE_GRPC_i, GATEHOUSE_PID_i.
# GATEHOUSE_BIN overrides the binary (default: the workspace's debug build).
set -euo pipefail

ROOT=${LOCAL_CLUSTER_DIR:-./local-cluster}
default_bin() {
  for b in "${CARGO_TARGET_DIR:-}/debug/gatehouse" "$HOME/.cache/gatehouse/target/debug/gatehouse" ./target/debug/gatehouse; do
    [ -x "$b" ] && { echo "$b"; return; }
  done
  echo "gatehouse"
}
BIN=${GATEHOUSE_BIN:-$(default_bin)}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

up() {
  local n=${1:-3}
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 up [N]" >&2; exit 2; }
  command -v "$BIN" >/dev/null 2>&1 || [ -x "$BIN" ] || { echo "no gatehouse binary at $BIN: run 'make build' or set GATEHOUSE_BIN" >&2; exit 1; }
  if [ -e "$ROOT" ]; then
    echo "$ROOT exists: run '$0 down' to stop it or '$0 clean' to delete it first" >&2
    exit 1
  fi
  mkdir -p "$ROOT"
  umask 077
  head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ROOT/cluster-secret"
  declare -a http grpc
  for i in $(seq 1 "$n"); do http[$i]=$(free_port); grpc[$i]=$(free_port); done
  local members=""
  for i in $(seq 1 "$n"); do members+="{ id = $i, addr = \"127.0.0.1:${grpc[$i]}\" }, "; done
  for i in $(seq 1 "$n"); do
    {
      echo "node_id = $i"
      echo "data_dir = \"$ROOT/node-$i\""
      echo "http_addr = \"127.0.0.1:${http[$i]}\""
      echo "grpc_addr = \"127.0.0.1:${grpc[$i]}\""
      echo "cluster_secret_file = \"$ROOT/cluster-secret\""
      if [ "$i" -eq 1 ]; then
        echo "initialize = true"
        echo "initial_members = [ ${members%, } ]"
        echo "bootstrap_admin_key_file = \"$ROOT/admin.key\""
      fi
    } > "$ROOT/node-$i.toml"
  done
  declare -a pid
  for i in $(seq 1 "$n"); do
    nohup "$BIN" serve --config "$ROOT/node-$i.toml" > "$ROOT/node-$i.log" 2>&1 &
    pid[$i]=$!
  done
  {
    echo "GATEHOUSE_ENDPOINT=http://127.0.0.1:${grpc[1]}"
    for i in $(seq 1 "$n"); do
      echo "GATEHOUSE_HTTP_$i=http://127.0.0.1:${http[$i]}"
      echo "GATEHOUSE_GRPC_$i=127.0.0.1:${grpc[$i]}"
      echo "GATEHOUSE_PID_$i=${pid[$i]}"
    done
  } > "$ROOT/cluster.env"

  # Wait for the bootstrap key (written once a leader committed it) and a leader everyone sees.
  local deadline=$((SECONDS + 60))
  until [ -s "$ROOT/admin.key" ] && GATEHOUSE_TOKEN_FILE="$ROOT/admin.key" "$BIN" admin --endpoint "http://127.0.0.1:${grpc[1]}" --json cluster status 2>/dev/null | grep -q '"leader":[1-9]'; do
    if [ $SECONDS -ge $deadline ]; then
      echo "the cluster did not elect a leader within 60 s; logs are in $ROOT/node-*.log" >&2
      exit 1
    fi
    for i in $(seq 1 "$n"); do
      kill -0 "${pid[$i]}" 2>/dev/null || { echo "node $i exited; see $ROOT/node-$i.log" >&2; exit 1; }
    done
    sleep 0.2
  done
  echo "GATEHOUSE_TOKEN=$(cat "$ROOT/admin.key")" >> "$ROOT/cluster.env"
  echo "cluster of $n nodes is up; variables in $ROOT/cluster.env" >&2
}

down() {
  [ -f "$ROOT/cluster.env" ] || { echo "no cluster at $ROOT" >&2; return 0; }
  local pids
  pids=$(grep '^GATEHOUSE_PID_' "$ROOT/cluster.env" | cut -d= -f2)
  for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $pids; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  echo "stopped" >&2
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  clean) down; rm -rf "$ROOT" ;;
  *) echo "usage: $0 up [N] | down | clean" >&2; exit 2 ;;
esac
