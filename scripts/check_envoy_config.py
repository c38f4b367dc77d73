"""Parses an Envoy bootstrap YAML into Envoy's own Bootstrap message (from
the `xds-protos` package, generated from Envoy's data-plane API): every
field name, type and `typed_config` must be one Envoy knows. There is no
Envoy binary here to run `envoy --mode validate`; this catches what that
would catch of a misspelt or misplaced field.

Usage: python check_envoy_config.py deploy/envoy/envoy.yaml
"""
import sys

import yaml
from google.protobuf import json_format

# Every type a typed_config in the file may name must be imported, so that
# its descriptor is in the pool when the Any is parsed.
import envoy.config.bootstrap.v3.bootstrap_pb2 as bootstrap
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.filters.http.ext_authz.v3.ext_authz_pb2  # noqa: F401
import envoy.extensions.filters.http.ratelimit.v3.rate_limit_pb2  # noqa: F401
import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
import envoy.extensions.filters.http.header_mutation.v3.header_mutation_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401


def main(path: str) -> None:
    with open(path) as f:
        config = yaml.safe_load(f)
    message = json_format.ParseDict(config, bootstrap.Bootstrap())
    listeners = message.static_resources.listeners
    clusters = {c.name for c in message.static_resources.clusters}
    assert listeners, "no listener"
    assert "gatehouse" in clusters, "no gatehouse cluster"
    print(f"{path}: a valid Envoy bootstrap ({len(listeners)} listener(s), clusters {sorted(clusters)})")


if __name__ == "__main__":
    main(sys.argv[1])
