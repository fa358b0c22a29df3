"""OAuth 2.0 client credentials: the token endpoint's checks, and bearer token verification.

Tokens are JWTs signed with HS256 (PyJWT) under the signing key Secret Manager mounts; the
service both issues and verifies them, so a shared secret is enough (no JWKS to publish). Each
token carries ``iss``, ``aud``, ``sub`` = ``client_id``, ``scope`` (space-separated), ``iat``,
``nbf``, ``exp``, ``jti`` and, in its header, ``kid``: the first 16 hex digits of the SHA-256 of
the key that signed it, so a token signed before a rotation is verified with the previous key.

Verification re-checks the client against the current document: a client removed from it, or a
scope taken from it, stops working at the next revision even for tokens already issued.

Errors are :class:`AuthError`, carrying the RFC 6749 §5.2 (token endpoint) or RFC 6750 §3
(resource requests) code; ``serving.api.app`` turns them into answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote_plus

import jwt

from serving.api.spec import ApiSpec, Client, Secrets

ALGORITHM = "HS256"
LEEWAY_S = 30  # clock skew accepted on exp/nbf/iat between instances


class AuthError(Exception):
    """``status`` 400/401/403 with ``error`` (the RFC's code) and a description safe to show."""

    def __init__(self, status: int, error: str, description: str, *, scope: str | None = None,
                 basic: bool = False) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description
        self.scope = scope  # the scope needed (insufficient_scope)
        self.basic = basic  # the client authenticated with HTTP Basic (invalid_client answers a Basic challenge)


@dataclass(frozen=True)
class Grant:
    """A verified token: whose, and what it may do now."""

    client: Client
    scopes: frozenset[str]
    token_id: str


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Authority:
    def __init__(self, spec: ApiSpec, secrets: Secrets) -> None:
        self.spec = spec
        self._signing_key = secrets.signing_keys[0]
        self._keys = {key_id(key): key for key in secrets.signing_keys}
        self._secret_digests = {cid: _digest(value) for cid, value in secrets.client_secrets.items()}
        self._dummy = _digest(uuid.uuid4().hex)

    # -- token endpoint --

    def client_credentials(self, headers: Mapping[str, str], form: Mapping[str, str]) -> tuple[str, str, bool]:
        """``(client_id, client_secret, basic)`` from the Authorization header or the body (one
        of the two, RFC 6749 §2.3.1)."""
        header = headers.get("authorization")
        in_body = "client_id" in form or "client_secret" in form
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                raise AuthError(401, "invalid_client", "client authentication must use HTTP Basic or the "
                                                       "client_id/client_secret body parameters", basic=True)
            if in_body:
                raise AuthError(400, "invalid_request", "use one client authentication method, not two")
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise AuthError(401, "invalid_client", "malformed HTTP Basic credentials", basic=True) from None
            user, sep, password = decoded.partition(":")
            if not sep:
                raise AuthError(401, "invalid_client", "malformed HTTP Basic credentials", basic=True)
            return unquote_plus(user), unquote_plus(password), True
        if not in_body:
            raise AuthError(401, "invalid_client", "client authentication is required (HTTP Basic, or client_id "
                                                   "and client_secret in the body)", basic=True)
        if not form.get("client_id") or "client_secret" not in form:
            raise AuthError(400, "invalid_request", "client_id and client_secret are both required")
        return form["client_id"], form["client_secret"], False

    def authenticate(self, client_id: str, client_secret: str, basic: bool) -> Client:
        """The client, when the secret is its own (compared in constant time, and as long for an
        unknown id as for a known one)."""
        expected = self._secret_digests.get(client_id)
        ok = hmac.compare_digest(_digest(client_secret), expected if expected is not None else self._dummy)
        client = self.spec.client(client_id)
        if not ok or expected is None or client is None:
            raise AuthError(401, "invalid_client", "unknown client or wrong secret", basic=basic)
        return client

    def granted_scopes(self, client: Client, requested: str | None) -> frozenset[str]:
        if requested is None or not requested.strip():
            return client.scopes
        wanted = frozenset(requested.split())
        refused = sorted(wanted - client.scopes)
        if refused:
            raise AuthError(400, "invalid_scope", f"this client may not have the scope(s) {' '.join(refused)}")
        return wanted

    def issue(self, client: Client, scopes: Iterable[str], now: float | None = None) -> dict[str, object]:
        now = int(time.time() if now is None else now)
        scope = " ".join(sorted(scopes))
        claims = {"iss": self.spec.token.issuer, "aud": self.spec.token.audience, "sub": client.client_id,
                  "client_id": client.client_id, "scope": scope, "iat": now, "nbf": now,
                  "exp": now + self.spec.token.ttl_seconds, "jti": uuid.uuid4().hex}
        token = jwt.encode(claims, self._signing_key, algorithm=ALGORITHM,
                           headers={"kid": key_id(self._signing_key)})
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.spec.token.ttl_seconds,
                "scope": scope}

    # -- resource requests --

    def verify(self, authorization: str | None) -> Grant:
        """The grant of the bearer token in an ``Authorization`` header (RFC 6750 §2.1)."""
        if not authorization:
            raise AuthError(401, "", "a bearer token is required (POST /oauth/token)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "invalid_request" if scheme.lower() == "bearer" else "",
                            "the Authorization header must be 'Bearer <token>'")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "the access token is malformed") from None
        key = self._keys.get(str(header.get("kid")))
        if key is None or header.get("alg") != ALGORITHM:
            raise AuthError(401, "invalid_token", "the access token was not issued by this API (or its key was "
                                                  "rotated out)")
        try:
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=self.spec.token.audience,
                                issuer=self.spec.token.issuer, leeway=LEEWAY_S,
                                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]})
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid_token", "the access token expired") from None
        except jwt.PyJWTError:
            raise AuthError(401, "invalid_token", "the access token is invalid") from None
        client = self.spec.client(str(claims.get("sub")))
        if client is None:
            raise AuthError(401, "invalid_token", "the access token's client is no longer registered")
        scopes = frozenset(str(claims.get("scope", "")).split()) & client.scopes
        return Grant(client=client, scopes=scopes, token_id=str(claims["jti"]))
