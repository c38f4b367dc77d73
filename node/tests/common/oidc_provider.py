"""A small but real OpenID Connect provider for Gatehouse's integration tests.

Gatehouse signs people in through an upstream OIDC provider ("SSO"); the tests
run this file as that provider, so the client is exercised against real
protocol checks rather than a canned mock. It is built on Authlib 1.2's server
side (Debian's python3-authlib) with Flask 2.2:

    /usr/bin/python3 oidc_provider.py CONFIG.json

It binds 127.0.0.1 on a free port, prints that port on one line to stdout, and
serves until killed; the issuer is ``http://127.0.0.1:<port>``. Logs go to
stderr. If stdin is a pipe, its end (the test process died) also ends this one;
any other stdin is ignored.

CONFIG.json: ``{"clients": [{"client_id", "client_secret", "redirect_uris"}],
"users": [{"sub", "username", "email", "email_verified", "groups", "hd",
"name", "disabled"?}]}``. Everything lives in memory.

Protocol: discovery, /jwks, /authorize (code flow; PKCE S256 required;
``login_hint=<username>`` approves at once, else a one-field sign-in form),
/token (authorization_code and refresh_token, client_secret_basic or _post;
refresh tokens rotate; every response carries an ID token), /userinfo.

Test controls, JSON in and out, under /_test/: clients, users (add, disable,
enable, delete, groups), mode (misbehaving ID tokens, see ID_TOKEN_MODES),
rotate (new signing key), logout-token (back-channel logout tokens), sessions,
deny, requests (call counters per endpoint).
"""

import base64
import html
import json
import logging
import os
import secrets
import stat
import sys
import threading
import time
from collections import Counter
from urllib.parse import unquote_plus

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import make_server
from authlib.common.encoding import to_native
from authlib.integrations.flask_oauth2 import (
    AuthorizationServer, ResourceProtector, current_token)
from authlib.jose import JsonWebKey, JsonWebSignature
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin, ClientMixin, TokenMixin, grants,
    InvalidRequestError, InvalidScopeError, list_to_scope, scope_to_list)
from authlib.oauth2.rfc6749.authenticate_client import _validate_client
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.core.util import create_half_hash

# Authlib refuses plain http unless the host is literally "localhost" (read per request).
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")
log = logging.getLogger("oidc_provider")

SCOPES = ["openid", "profile", "email", "groups", "offline_access"]
ACCESS_TOKEN_TTL = 3600
ID_TOKEN_TTL = 300
CODE_TTL = 600
ID_TOKEN_MODES = {
    "normal", "wrong_key", "wrong_key_same_kid", "alg_none", "wrong_aud",
    "expired", "wrong_iss", "wrong_nonce", "hs256_with_client_secret",
    "no_at_hash_mismatch", "unverified_email"}
LOGOUT_KINDS = {"normal", "wrong_key", "alg_none", "with_nonce", "no_events",
                "expired", "wrong_iss"}
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
JWS = JsonWebSignature(algorithms=["RS256", "HS256"])


def new_rsa_key(kid=None):
    return JsonWebKey.generate_key("RSA", 2048, is_private=True, options={
        "kid": kid or secrets.token_hex(8), "use": "sig", "alg": "RS256"})


def public_jwk(key):
    # as_dict(is_private=False) keeps only n, e, kty and kid; add use and alg back.
    return key.as_dict(is_private=False, use="sig", alg="RS256")


class State:
    """All provider state; every mutation happens under LOCK."""

    def __init__(self):
        self.issuer = ""
        self.clients = {}        # client_id -> Client
        self.users = {}          # sub -> user dict
        self.codes = {}          # code -> AuthCode
        self.by_access = {}      # access token -> Token
        self.by_refresh = {}     # refresh token -> Token
        self.used_nonces = set()  # (client_id, nonce) that went into a code
        self.sessions = []       # [{"sub", "sid"}]
        self.key = new_rsa_key()
        self.published_old = []  # public JWKs of rotated-out keys kept in /jwks
        self.forger = new_rsa_key("other")  # never published
        self.mode = "normal"
        self.deny = False
        self.requests = Counter()


S = State()
LOCK = threading.RLock()


def active_user(sub=None, username=None):
    """The user with this sub (or username/email), if it exists and is enabled."""
    if username is not None:
        sub = next((u["sub"] for u in S.users.values()
                    if username in (u.get("username"), u.get("email"))), None)
    user = S.users.get(sub)
    return user if user and not user.get("disabled") else None


def user_claims(user):
    claims = UserInfo(
        sub=user["sub"], preferred_username=user.get("username"),
        email=user.get("email"), name=user.get("name"),
        email_verified=bool(user.get("email_verified", False)),
        groups=list(user.get("groups", [])))
    if user.get("hd"):
        claims["hd"] = user["hd"]
    if S.mode == "unverified_email":
        claims["email_verified"] = False
    return claims


# ---- Authlib models ----------------------------------------------------------

class Client(ClientMixin):
    def __init__(self, data):
        self.client_id = data["client_id"]
        self.client_secret = data["client_secret"]
        self.redirect_uris = list(data.get("redirect_uris", []))

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None  # OIDC: redirect_uri is required, never defaulted

    def get_allowed_scope(self, scope):
        return list_to_scope([s for s in scope_to_list(scope) if s in SCOPES])

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris  # exact match

    def check_client_secret(self, client_secret):
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class AuthCode(AuthorizationCodeMixin):
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.expires_at = time.time() + CODE_TTL

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope

    def get_nonce(self):
        return self.nonce

    def get_auth_time(self):
        return self.auth_time


class Token(TokenMixin):
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.issued_at = time.time()
        self.refresh_revoked = False

    def check_client(self, client):
        return self.client_id == client.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self):
        return False  # access tokens live out their hour; rotation revokes refresh tokens


# ---- grants ------------------------------------------------------------------

class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_authorization_request(self):
        redirect_uri = super().validate_authorization_request()
        if "openid" not in (scope_to_list(self.request.scope) or []):
            raise InvalidScopeError('scope must include "openid"',
                                    state=self.request.state, redirect_uri=redirect_uri)
        return redirect_uri

    def save_authorization_code(self, code, request):
        data, sid = request.data, secrets.token_urlsafe(16)
        S.codes[code] = AuthCode(
            code=code, client_id=request.client.client_id, sub=request.user["sub"],
            redirect_uri=request.redirect_uri, scope=request.scope,
            nonce=data.get("nonce"), code_challenge=data.get("code_challenge"),
            code_challenge_method=data.get("code_challenge_method"),
            auth_time=int(time.time()), sid=sid)
        if data.get("nonce"):
            S.used_nonces.add((request.client.client_id, data["nonce"]))
        S.sessions.append({"sub": request.user["sub"], "sid": sid})

    def query_authorization_code(self, code, client):
        item = S.codes.get(code)
        if item and item.client_id == client.client_id and time.time() < item.expires_at:
            return item
        return None

    def delete_authorization_code(self, authorization_code):
        S.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return active_user(authorization_code.sub)


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotate: each refresh returns a new one

    def authenticate_refresh_token(self, refresh_token):
        # A gone or disabled user yields None here so Authlib answers invalid_grant
        # (its own "no user" path in create_token_response says invalid_request).
        token = S.by_refresh.get(refresh_token)
        if token and not token.refresh_revoked and active_user(token.sub):
            return token
        return None

    def authenticate_user(self, credential):
        return active_user(credential.sub)

    def revoke_old_credential(self, credential):
        credential.refresh_revoked = True


class S256Required(CodeChallenge):
    """PKCE on every request, S256 only. Authlib's CodeChallenge(required=True)
    only insists on a verifier for public clients, and defaults to plain."""
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant):
        req = grant.request
        if not req.data.get("code_challenge"):
            raise InvalidRequestError('Missing "code_challenge" (PKCE is required)', state=req.state)
        if req.data.get("code_challenge_method") != "S256":
            raise InvalidRequestError('"code_challenge_method" must be S256', state=req.state)
        super().validate_code_challenge(grant)


class OIDC(OpenIDCode):
    """OpenIDCode extension, also attached to the refresh grant. process_token is
    replaced because Authlib's one signs with a bare {"alg"} header and has no
    room for sid or the test modes."""

    def exists_nonce(self, nonce, request):
        return (request.client_id, nonce) in S.used_nonces

    def get_jwt_config(self, grant):
        return {"key": S.key, "alg": "RS256", "iss": S.issuer, "exp": ID_TOKEN_TTL}

    def generate_user_info(self, user, scope):
        return user_claims(user)

    def process_token(self, grant, token):
        req, cfg, now = grant.request, self.get_jwt_config(grant), int(time.time())
        cred = req.credential  # AuthCode (code grant) or Token (refresh grant)
        claims = {"iss": cfg["iss"], "aud": req.client.client_id, "iat": now,
                  "exp": now + cfg["exp"], "auth_time": cred.auth_time, "sid": cred.sid,
                  "at_hash": to_native(create_half_hash(token["access_token"], "RS256"))}
        if isinstance(cred, AuthCode) and cred.nonce:
            claims["nonce"] = cred.nonce
        claims.update(self.generate_user_info(req.user, token.get("scope")))
        token["id_token"] = make_id_token(claims, req.client)
        return token


def make_id_token(claims, client):
    mode, now = S.mode, int(time.time())
    if mode == "wrong_aud":
        claims["aud"] = "someone-else"
    elif mode == "expired":
        claims.update(iat=now - 900, exp=now - 600)
    elif mode == "wrong_iss":
        claims["iss"] = "http://evil.example"
    elif mode == "wrong_nonce":
        claims["nonce"] = "not-the-nonce"
    elif mode == "no_at_hash_mismatch":
        claims["at_hash"] = to_native(create_half_hash("not-the-access-token", "RS256"))
    header = {"alg": "RS256", "typ": "JWT", "kid": S.key.kid}
    if mode == "wrong_key":
        return sign(dict(header, kid="other"), claims, S.forger)
    if mode == "wrong_key_same_kid":
        return sign(header, claims, S.forger)
    if mode == "alg_none":
        return unsigned(claims)
    if mode == "hs256_with_client_secret":
        return sign({"alg": "HS256", "typ": "JWT"}, claims, client.client_secret.encode())
    return sign(header, claims, S.key)


def sign(header, claims, key):
    return to_native(JWS.serialize_compact(header, json.dumps(claims).encode(), key))


def unsigned(claims):
    def b64(part):
        return base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + "."


def save_token(token, request):
    cred = request.credential
    t = Token(access_token=token["access_token"], refresh_token=token.get("refresh_token"),
              client_id=request.client.client_id, sub=request.user["sub"],
              scope=token.get("scope"), expires_in=token.get("expires_in", ACCESS_TOKEN_TTL),
              sid=cred.sid, auth_time=cred.auth_time)
    S.by_access[t.access_token] = t
    if t.refresh_token:
        S.by_refresh[t.refresh_token] = t


def client_secret_basic(query_client, request):
    """Authlib 1.2 does not form-urldecode HTTP Basic client credentials
    (RFC 6749 2.3.1 says clients encode them; the Rust oauth2 crate does)."""
    auth = request.headers.get("Authorization") or ""
    if not auth[:6].lower() == "basic ":
        return None
    try:
        raw = base64.b64decode(auth[6:].strip()).decode()
    except ValueError:
        return None
    client_id, sep, secret = raw.partition(":")
    if not sep or not client_id:
        return None
    client = _validate_client(query_client, unquote_plus(client_id), request.state, 401)
    return client if client.check_client_secret(unquote_plus(secret)) else None


class Bearer(BearerTokenValidator):
    def authenticate_token(self, token_string):
        token = S.by_access.get(token_string)
        return token if token and active_user(token.sub) else None


# ---- Flask app ---------------------------------------------------------------

app = Flask(__name__)
app.config.update(OAUTH2_REFRESH_TOKEN_GENERATOR=True, OAUTH2_SCOPES_SUPPORTED=SCOPES,
                  OAUTH2_TOKEN_EXPIRES_IN={"authorization_code": ACCESS_TOKEN_TTL,
                                           "refresh_token": ACCESS_TOKEN_TTL})
server = AuthorizationServer(app, query_client=lambda cid: S.clients.get(cid),
                             save_token=save_token)
server.register_client_auth_method("client_secret_basic", client_secret_basic)
server.register_grant(CodeGrant, [S256Required(required=True), OIDC(require_nonce=False)])
server.register_grant(RefreshGrant, [OIDC()])
require_oauth = ResourceProtector()
require_oauth.register_token_validator(Bearer())

COUNTED = {"authorize", "token", "userinfo", "jwks", "discovery"}


@app.before_request
def count_request():
    if request.endpoint in COUNTED:
        with LOCK:
            S.requests[request.endpoint] += 1


@app.get("/.well-known/openid-configuration", endpoint="discovery")
def discovery():
    i = S.issuer
    return jsonify({
        "issuer": i, "authorization_endpoint": i + "/authorize",
        "token_endpoint": i + "/token", "userinfo_endpoint": i + "/userinfo",
        "jwks_uri": i + "/jwks", "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"], "scopes_supported": SCOPES,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
                             "at_hash", "sid", "email", "email_verified",
                             "preferred_username", "name", "groups", "hd"],
        "backchannel_logout_supported": True, "backchannel_logout_session_supported": True})


@app.get("/jwks")
def jwks():
    with LOCK:
        return jsonify({"keys": [public_jwk(S.key)] + S.published_old})


SIGN_IN_FORM = """<!doctype html><title>Sign in</title>
<form method=post action="{action}">
<label>Username <input name=username id=username autofocus></label>
<button type=submit id=approve>Sign in</button></form>"""


@app.route("/authorize", methods=["GET", "POST"])
def authorize():
    with LOCK:
        if S.deny:  # still validated first: a bad client or redirect_uri gets a 400
            return server.create_authorization_response(grant_user=None)
        if request.method == "POST":  # unknown/disabled -> access_denied redirect
            user = active_user(username=request.form.get("username", ""))
            return server.create_authorization_response(grant_user=user)
        hint = request.args.get("login_hint")
        user = active_user(username=hint) if hint else None
        if user:
            return server.create_authorization_response(grant_user=user)
        try:
            server.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            return server.handle_error_response(None, error)
        return SIGN_IN_FORM.format(action=html.escape(request.full_path, quote=True))


@app.post("/token")
def token():
    with LOCK:
        return server.create_token_response()


@app.route("/userinfo", methods=["GET", "POST"])
@require_oauth()
def userinfo():
    with LOCK:
        user = active_user(current_token.sub)
        if not user:
            abort(401)
        return jsonify(dict(user_claims(user)))


# ---- test controls -----------------------------------------------------------

@app.errorhandler(HTTPException)
def json_error(e):
    if e.response is not None:  # Authlib's ResourceProtector built its own (401 + JSON)
        return e
    return jsonify({"error": e.name, "error_description": e.description}), e.code


def body():
    return request.get_json(force=True, silent=True) or {}


def add_user(data):
    if not data.get("sub"):
        abort(400, "user needs a sub")
    S.users[data["sub"]] = dict(data)


def known_user(sub):
    if sub not in S.users:
        abort(404, "no such user")
    return S.users[sub]


@app.post("/_test/clients")
def test_clients():
    with LOCK:
        client = Client(body())
        S.clients[client.client_id] = client
        return jsonify({"client_id": client.client_id, "redirect_uris": client.redirect_uris})


@app.post("/_test/users")
def test_users():
    with LOCK:
        add_user(body())
        return jsonify({"ok": True})


@app.post("/_test/users/<sub>/<action>")
def test_user_action(sub, action):
    with LOCK:
        user = known_user(sub)
        if action in ("disable", "enable"):
            user["disabled"] = action == "disable"
        elif action == "groups":
            user["groups"] = list(body().get("groups", []))
        else:
            abort(404)
        return jsonify(user)


@app.delete("/_test/users/<sub>")
def test_delete_user(sub):
    with LOCK:
        known_user(sub)
        del S.users[sub]
        return jsonify({"ok": True})


@app.post("/_test/mode")
def test_mode():
    mode = body().get("id_token", "normal")
    if mode not in ID_TOKEN_MODES:
        abort(400, f"unknown mode {mode!r}")
    with LOCK:
        S.mode = mode
        return jsonify({"id_token": mode})


@app.post("/_test/rotate")
def test_rotate():
    publish_old = bool(body().get("publish_old", False))
    new = new_rsa_key()  # slow-ish; made outside the lock
    with LOCK:
        if publish_old:
            S.published_old.append(public_jwk(S.key))
        S.key = new
        return jsonify({"kid": new.kid, "jwks": [public_jwk(new)] + S.published_old})


@app.post("/_test/logout-token")
def test_logout_token():
    data = body()
    kind = data.get("kind", "normal")
    if kind not in LOGOUT_KINDS:
        abort(400, f"unknown kind {kind!r}")
    with LOCK:
        now = int(time.time()) - (3600 if kind == "expired" else 0)
        default_aud = next(iter(S.clients), None)
        claims = {"iss": "http://evil.example" if kind == "wrong_iss" else S.issuer,
                  "aud": data.get("aud") or default_aud, "iat": now, "exp": now + 120,
                  "jti": data.get("jti") or secrets.token_urlsafe(16)}
        if kind != "no_events":
            claims["events"] = {BACKCHANNEL_EVENT: {}}
        if kind == "with_nonce":
            claims["nonce"] = secrets.token_urlsafe(8)
        for name in ("sub", "sid"):  # neither given: neither present (an invalid token)
            if data.get(name):
                claims[name] = data[name]
        header = {"alg": "RS256", "typ": "logout+jwt", "kid": S.key.kid}
        if kind == "alg_none":
            jwt_text = unsigned(claims)
        elif kind == "wrong_key":
            jwt_text = sign(dict(header, kid="other"), claims, S.forger)
        else:
            jwt_text = sign(header, claims, S.key)
        return jsonify({"logout_token": jwt_text, "claims": claims})


@app.get("/_test/sessions")
def test_sessions():
    with LOCK:
        return jsonify(list(S.sessions))


@app.post("/_test/deny")
def test_deny():
    with LOCK:
        S.deny = bool(body().get("deny", True))
        return jsonify({"deny": S.deny})


@app.get("/_test/requests")
def test_requests():
    with LOCK:
        return jsonify({name: S.requests.get(name, 0) for name in sorted(COUNTED)})


# ---- main --------------------------------------------------------------------

def exit_when_stdin_pipe_closes():
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return
    except OSError:
        return

    def watch():
        while os.read(0, 4096):
            pass
        log.info("stdin closed; exiting")
        os._exit(0)
    threading.Thread(target=watch, daemon=True).start()


def main():
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="oidc_provider %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit("usage: oidc_provider.py CONFIG.json")
    with open(sys.argv[1]) as f:
        config = json.load(f)
    for data in config.get("clients", []):
        S.clients[data["client_id"]] = Client(data)
    for data in config.get("users", []):
        add_user(data)
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    S.issuer = f"http://127.0.0.1:{httpd.server_port}"
    sys.stdout.write(f"{httpd.server_port}\n")
    sys.stdout.flush()
    log.info("issuer %s", S.issuer)
    exit_when_stdin_pipe_closes()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
