"""H1 and H2: who is asking (a bearer key), in which namespace, and how often."""

from __future__ import annotations

import math
import re
import threading
import time

from fastapi import Request

from export_pipeline.api.errors import (
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    UnauthorizedError,
)
from export_pipeline.errors import NotFoundError
from export_pipeline.store import Namespace, Store
from export_pipeline.store.keys import ApiKey

_BEARER = re.compile(r"Bearer\s+(\S+)\s*", re.IGNORECASE)
NOT_ALLOWED = "this key may not use namespace {!r}"


def api_key(request: Request, store: Store) -> ApiKey:
    """The caller's key from `Authorization: Bearer sk_...` (401 when missing or unknown)."""
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError("missing Authorization: Bearer <key> header")
    match = _BEARER.fullmatch(header)
    key = store.keys.authenticate(match.group(1)) if match else None
    if key is None:
        raise AuthenticationError("invalid or revoked API key")
    return key


def namespace(request: Request, store: Store, key: ApiKey) -> Namespace:
    """H2: `X-Namespace`, else `?namespace=`; a namespace the key may not use is a 403,
    whether or not it exists, so keys learn nothing about other namespaces."""
    identifier = request.headers.get("x-namespace") or request.query_params.get("namespace")
    if not identifier:
        raise BadRequestError("missing namespace: send an X-Namespace header or ?namespace=")
    try:
        found = store.catalog.namespace(identifier)
    except NotFoundError:
        raise UnauthorizedError(NOT_ALLOWED.format(identifier)) from None
    if not key.allows(found.id):
        raise UnauthorizedError(NOT_ALLOWED.format(identifier))
    return found


def caller(request: Request, store: Store, limiter: RateLimiter) -> tuple[ApiKey, Namespace]:
    """H1, the rate limit, then H2, in that order: who asks, and in which namespace."""
    key = api_key(request, store)
    limiter.check(key.key_id)
    return key, namespace(request, store, key)


class RateLimiter:
    """Per-key token buckets: `per_minute` requests a minute, bursts up to that; 0 is off."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._lock = threading.Lock()

    def check(self, key_id: str) -> None:
        """Take one token for this key or raise a 429 saying when the next one is due."""
        if self.per_minute <= 0:
            return
        rate = self.per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * rate)
            if tokens < 1:
                self._buckets[key_id] = (tokens, now)
                wait = math.ceil((1 - tokens) / rate)
                raise RateLimitError(f"too many requests for this key; retry in {wait} s", wait)
            self._buckets[key_id] = (tokens - 1, now)
