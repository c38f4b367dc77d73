#!/usr/bin/env bash
# Installs the system packages Gatehouse needs, if missing: the build's
# (`scripts/deps.sh`) or the build's and the tests' (`scripts/deps.sh test`).
# Idempotent and quiet when everything is there; used by `make dev` and `make test`.
set -euo pipefail

need=()
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)   # RocksDB's bindgen
command -v c++ >/dev/null 2>&1 || need+=(g++)                   # RocksDB's C++ sources
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)       # webauthn-rs (passkeys) links OpenSSL
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)     # ... and finds it with pkg-config
if [ "${1:-}" = "test" ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)   # the forward-auth test
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)                        # deploy/systemd checks
  command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)                      # deploy/k8s (kustomize)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)                               # the sign-in pages in a browser
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  command -v caddy >/dev/null 2>&1 || need+=(caddy)                                     # forward_auth with the sign-in redirect
  /usr/bin/python3 -c "import aiosmtpd" >/dev/null 2>&1 || need+=(python3-aiosmtpd)       # a real SMTP server for sign-in links
  /usr/bin/python3 -c "import authlib" >/dev/null 2>&1 || need+=(python3-authlib)         # a real OIDC provider for upstream sign-in
  /usr/bin/python3 -c "import flask" >/dev/null 2>&1 || need+=(python3-flask)
  /usr/bin/python3 -c "import pyotp" >/dev/null 2>&1 || need+=(python3-pyotp)           # a second TOTP implementation for the tests
  /usr/bin/python3 -c "import jwt, cryptography" >/dev/null 2>&1 || need+=(python3-jwt python3-cryptography) # an independent JWT verifier
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required: install Rust (rustup) first" >&2; exit 1; }

if [ "${1:-}" = "test" ]; then
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Envoy's own protos for Python (PyPI xds-protos), to check the example
# bootstrap in deploy/envoy/ (there is no Envoy binary to run); the
# Kubernetes API schemas (kubernetes-validate) for deploy/k8s/.
if [ "${1:-}" = "test" ]; then
  venv="${GATEHOUSE_PYENV:-$HOME/.cache/gatehouse/pyenv}"
  if ! "$venv/bin/python" -c 'import envoy.config.bootstrap.v3.bootstrap_pb2, yaml, kubernetes_validate' >/dev/null 2>&1; then
    echo "installing: xds-protos pyyaml kubernetes-validate (into $venv)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q xds-protos pyyaml kubernetes-validate
  fi
fi
