"""Verifies Gatehouse's downstream JWTs with an independent library.

PyJWT with `cryptography` (Debian's python3-jwt, python3-cryptography),
never Gatehouse's own code: argv is the JWKS file, the issuer and the
audience; stdin holds one token per line; stdout gets one JSON line per
token: {"claims": {...}} or {"error": "<PyJWT exception name>"}.

The algorithm is pinned per key (the JWK's own `alg`), as an app should:
the token's header never chooses it.
"""

import json
import sys

import jwt


def main():
    jwks_path, issuer, audience = sys.argv[1:4]
    with open(jwks_path) as f:
        keys = {k["kid"]: k for k in json.load(f)["keys"]}
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            header = jwt.get_unverified_header(token)
            jwk = keys.get(header.get("kid"))
            if jwk is None:
                raise jwt.exceptions.InvalidKeyError("unknown kid")
            key = jwt.PyJWK(jwk).key
            claims = jwt.decode(
                token,
                key,
                algorithms=[jwk["alg"]],
                audience=audience,
                issuer=issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
            print(json.dumps({"claims": claims}), flush=True)
        except Exception as e:  # every refusal is reported by its class
            print(json.dumps({"error": type(e).__name__}), flush=True)


if __name__ == "__main__":
    main()
