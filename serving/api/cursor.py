"""Opaque page cursors: the position after a page's last row, sealed so clients can neither read
nor forge it.

A cursor holds the values of the source's pagination order columns at the last row returned, the
names of those columns, and a fingerprint of the request's filters. It is sealed with AES-GCM
(``cryptography``) under a key derived (HKDF-SHA256) from the token signing key, so:

* a client cannot move it (a forged position could otherwise be crafted to probe values);
* the values of a key column classified as PII, when a source's order includes one, travel only
  sealed;
* a cursor used with other filters, on another source, or after the source's order changed is
  refused with 400 rather than silently starting somewhere else.

Key rotation: a cursor sealed under ``token.previous_signing_key_env``'s key still opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1
_INFO = b"headwater-data-api cursor v1"
_NONCE_BYTES = 12
MAX_CURSOR_CHARS = 4096


class CursorError(ValueError):
    """The cursor cannot be used; the message is safe to show the client."""


@dataclass(frozen=True)
class Position:
    source: str
    order: tuple[str, ...]
    filters: str  # fingerprint of the filters (see :func:`filters_fingerprint`)
    values: tuple[Any, ...]  # JSON-encoded values of ``order`` at the last row


def filters_fingerprint(filters: Sequence[tuple[str, str, Any]]) -> str:
    """A digest of the normalized filters (field, operator, JSON-encoded value), order-free."""
    canonical = json.dumps(sorted([list(f) for f in filters], key=lambda f: (f[0], f[1])), separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class CursorSealer:
    def __init__(self, signing_keys: Sequence[bytes]) -> None:
        if not signing_keys:
            raise ValueError("at least one key")
        self._keys = [AESGCM(self._derive(key)) for key in signing_keys]

    @staticmethod
    def _derive(key: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(key)

    def seal(self, position: Position) -> str:
        body = json.dumps({"v": VERSION, "s": position.source, "o": list(position.order), "f": position.filters,
                           "k": list(position.values)}, separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._keys[0].encrypt(nonce, body, _INFO)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str, source: str, order: tuple[str, ...], filters: str) -> tuple[Any, ...]:
        """The position's values, when ``token`` was issued by this service for this source, order
        and filters; else :class:`CursorError`."""
        if len(token) > MAX_CURSOR_CHARS:
            raise CursorError("not a cursor issued by this API")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise CursorError("not a cursor issued by this API") from None
        nonce, sealed = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
        body = None
        for key in self._keys:
            try:
                body = key.decrypt(nonce, sealed, _INFO)
                break
            except (InvalidTag, ValueError):
                continue
        if body is None:
            raise CursorError("not a cursor issued by this API (or its key was rotated twice since)")
        document = json.loads(body)
        if document.get("v") != VERSION or document.get("s") != source:
            raise CursorError(f"this cursor was issued for another source, not {source!r}")
        if tuple(document.get("o") or ()) != order:
            raise CursorError("this cursor is from a previous definition of the source (its order changed); "
                              "start again without a cursor")
        if document.get("f") != filters:
            raise CursorError("this cursor was issued for other filters: send the same filters with it")
        values = tuple(document.get("k") or ())
        if len(values) != len(order):
            raise CursorError("not a cursor issued by this API")
        return values
