"""Basic authentication against bcrypt hashes, with a cache of successes."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Final

import bcrypt

log = logging.getLogger(__name__)

BASIC_AUTH_REALM: Final = "guestload"
AUTH_CACHE_SIZE: Final = 256
"""Successful (user, password) checks remembered, so a scrape does not pay bcrypt every time."""

# -- basic authentication -----------------------------------------------------------------


class BasicAuthenticator:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (~100 ms at cost 12), so successful checks are remembered in a
    small LRU cache keyed by an HMAC (with a per-process random key) of user, stored hash and
    password: the cache holds no password, a changed hash never matches an old entry, and
    failed attempts are never cached. bcrypt runs one check at a time, so a flood of wrong
    passwords costs at most one core.
    """

    def __init__(self, users: Mapping[str, bytes], *, cache_size: int = AUTH_CACHE_SIZE) -> None:
        self._users = dict(users)
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self._decoy = _decoy_hash()  # made now, so no request pays for making it

    def check(self, authorization: str | None) -> bool:
        """True when the header names a configured user with the right password."""
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        key = hmac.digest(
            self._cache_key,
            b"\0".join((user.encode(), stored or b"", password)),
            hashlib.sha256,
        )
        with self._lock:
            if stored is not None and key in self._cache:
                self._cache.move_to_end(key)
                return True
        with self._bcrypt_lock:
            matches = bcrypt.checkpw(password, stored or self._decoy)
        if not (matches and stored is not None):
            return False
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


@functools.cache
def _decoy_hash() -> bytes:
    """A hash of a password nobody has: unknown users cost the same bcrypt time as known ones."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=10))


def _basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None
