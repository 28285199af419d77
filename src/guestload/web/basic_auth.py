"""Basic authentication against bcrypt hashes, with a cache of successes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

import bcrypt

log = logging.getLogger(__name__)

BASIC_AUTH_REALM: Final = "guestload"
DEFAULT_DECOY_COST: Final = 10
_BCRYPT_ALPHABET: Final = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
AUTH_CACHE_SIZE: Final = 256
"""Successful (user, password) checks remembered, so a scrape does not pay bcrypt every time."""

# -- basic authentication -----------------------------------------------------------------


BCRYPT_MAX_PASSWORD_BYTES: Final = 72
"""bcrypt's key schedule reads no further: Go's bcrypt ignores the rest, so guestload does too."""


class BasicAuthenticator:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (at cost 12 a check takes a noticeable part of a second), so
    successful checks are remembered in a small LRU cache keyed by an HMAC (with a per-process
    random key) of user, stored hash and password: the cache holds no password, a changed hash
    never matches an old entry, and failed attempts are never cached. A reloaded configuration
    keeps the cache (``previous``).

    bcrypt runs one check at a time *per user* (unknown users share the decoy's turn): a flood
    of wrong passwords costs at most one core per configured user, and one user's expensive
    hash never delays another user's login. An unknown user is checked against a decoy hash
    of the cost most configured users have, so its answer takes as long as theirs. Passwords
    longer than 72 bytes are compared on their first 72, as Go's bcrypt does.
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        *,
        cache_size: int = AUTH_CACHE_SIZE,
        previous: BasicAuthenticator | None = None,
    ) -> None:
        self._users = dict(users)
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_key: bytes = secrets.token_bytes(32)
        if previous is not None:
            self._cache, self._cache_key = previous._cache_copy(), previous._cache_key
        self._user_locks = {user: threading.Lock() for user in self._users}
        self._decoy_lock = threading.Lock()
        self._decoy = decoy_hash(decoy_cost(self._users.values()))

    def _cache_copy(self) -> OrderedDict[bytes, None]:
        with self._lock:
            return OrderedDict(self._cache)

    def check(self, authorization: str | None, *, deadline: float | None = None) -> bool:
        """True when the header names a configured user with the right password.

        False as well when the user's bcrypt turn does not come before ``deadline`` (a
        :func:`time.monotonic` time): a flood of wrong passwords for one user delays that
        user's uncached logins at most until their deadline.
        """
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        password = password[:BCRYPT_MAX_PASSWORD_BYTES]
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
        turn = self._user_locks.get(user, self._decoy_lock)
        timeout = -1.0 if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not turn.acquire(timeout=timeout):
            return False
        try:
            matches = _checkpw(password, stored or self._decoy)
        finally:
            turn.release()
        if not (matches and stored is not None):
            return False
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return True


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read: no password matches it
        return False


def bcrypt_cost(hashed: bytes) -> int:
    """The cost written in a ``$2?$NN$...`` hash."""
    return int(hashed[4:6])


def decoy_cost(hashes: Iterable[bytes]) -> int:
    """The cost most of ``hashes`` have (the higher on a tie); 10 when there are none."""
    costs = Counter(bcrypt_cost(hashed) for hashed in hashes)
    if not costs:
        return DEFAULT_DECOY_COST
    return max(costs, key=lambda cost: (costs[cost], cost))


def decoy_hash(cost: int) -> bytes:
    """A well-formed hash of ``cost`` that no password has: a random salt and a random digest.

    Made without running bcrypt, so even a cost-18 decoy costs nothing to make.
    """
    digest = "".join(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(rounds=cost) + digest.encode()


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
