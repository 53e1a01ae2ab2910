"""API keys (docs/contract.md H1): `sk_` + 32 url-safe characters, shown once, stored as hashes.

A key is `sk_` + 8-character lookup tag + 24-character secret. The tag is stored in plain
text (indexed) so `authenticate` fetches its row(s) directly instead of hashing against every
key; the 24 secret characters (144 bits) never touch the disk. The whole key is hashed with
a per-key random salt, and the hash records its own parameters so they can be raised later
without invalidating existing keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, computed_field

from export_pipeline.errors import InvalidInput, NotFoundError
from export_pipeline.store.catalog import Catalog, Namespace, new_id, utc_now, utc_timestamp
from export_pipeline.store.database import INTEGRITY_ERRORS, Connection

KEY = re.compile(r"sk_[A-Za-z0-9_-]{32}")
TAG_LENGTH = 8
MAX_NAME_LENGTH = 200

# scrypt rather than PBKDF2: it is memory-hard (8 MiB per hash here), so a GPU/ASIC gains far
# less against a stolen catalog than it does against PBKDF2-SHA256. Measured on the 2-core dev
# machine: n=2**13 costs ~27 ms of CPU per verify (PBKDF2 at 100k iterations ~34 ms); n=2**14
# costs ~57 ms, over the ~50 ms per-request budget. The keys are 144-bit random secrets, so
# the work factor is defence in depth, not what stops a brute force.
SCRYPT_N = 2**13
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024

# last_used_at is written at most once per minute per key: most requests only read the
# catalog, so authentication never queues behind ingests for the write lock.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKey(BaseModel):
    """A stored API key's public record: never the key or its hash."""

    key_id: str
    name: str | None
    namespaces: list[Namespace]
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def namespace_ids(self) -> list[str]:
        """The ids of the namespaces this key may act in."""
        return [namespace.id for namespace in self.namespaces]

    def allows(self, namespace_id: str) -> bool:
        """Whether this key may act in the namespace with this id (ids only, not names)."""
        return self.revoked_at is None and namespace_id in self.namespace_ids


def generate_key() -> str:
    """A new key: `sk_` + 32 url-safe characters (24 random bytes, base64url, no padding)."""
    return "sk_" + secrets.token_urlsafe(24)


def hash_key(key: str) -> str:
    """`scrypt$n$r$p$salt$digest` (base64url) of the key, salted with 16 random bytes."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(key, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_key(key: str, stored: str) -> bool:
    """Whether `key` hashes to `stored`, compared in constant time."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _scrypt(key, _unb64(salt), int(n), int(r), int(p))
        return hmac.compare_digest(derived, _unb64(digest))
    except ValueError:
        return False


class ApiKeys:
    """The api_keys table of the catalog and its namespace bindings."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(self, namespaces: list[Namespace], name: str | None = None) -> tuple[str, ApiKey]:
        """A new key bound to `namespaces` (at least one, already resolved); the key itself
        is returned this once and cannot be recovered later."""
        bound = list({namespace.id: namespace for namespace in namespaces}.values())
        if not bound:
            raise InvalidInput("an API key needs at least one namespace")
        if name is not None and not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidInput(f"key names are 1 to {MAX_NAME_LENGTH} characters")
        key = generate_key()
        key_id = new_id("key_", 12)
        stored = hash_key(key)  # outside the transaction: hashing takes tens of ms
        created_at = utc_now()
        try:
            with self.catalog.transaction() as db:
                db.execute(
                    "INSERT INTO api_keys (id, name, lookup, hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (key_id, name, _tag(key), stored, created_at),
                )
                db.executemany(
                    "INSERT INTO api_key_namespaces (key_id, namespace_id, position)"
                    " VALUES (?, ?, ?)",
                    [(key_id, namespace.id, i) for i, namespace in enumerate(bound)],
                )
        except INTEGRITY_ERRORS:  # a namespace that is not (or no longer) in the catalog
            raise NotFoundError("namespace not found") from None
        record = ApiKey(
            key_id=key_id,
            name=name,
            namespaces=bound,
            created_at=created_at,
            last_used_at=None,
            revoked_at=None,
        )
        return key, record

    def authenticate(self, key: object) -> ApiKey | None:
        """The live key record for `key`, or None for a malformed, unknown, wrong or revoked
        key (the API answers 401 for all of them alike)."""
        if not isinstance(key, str) or not KEY.fullmatch(key):
            return None
        # A plain read: no write lock, so authentication never waits for ingests.
        with self.catalog.connect() as db:
            rows = db.execute(
                "SELECT id, hash FROM api_keys WHERE lookup = ? AND revoked_at IS NULL",
                (_tag(key),),
            ).fetchall()
            key_id = next((row["id"] for row in rows if verify_key(key, row["hash"])), None)
            record = None if key_id is None else self._get(db, key_id)
        if record is None or record.revoked_at is not None:
            return None
        now = datetime.now(UTC)
        stale = utc_timestamp(now - LAST_USED_RESOLUTION)
        if record.last_used_at is None or record.last_used_at < stale:
            with self.catalog.transaction() as db:
                db.execute(
                    "UPDATE api_keys SET last_used_at = ? WHERE id = ?"
                    " AND (last_used_at IS NULL OR last_used_at < ?)",
                    (utc_timestamp(now), key_id, stale),
                )
            record = record.model_copy(update={"last_used_at": utc_timestamp(now)})
        return record

    def get(self, key_id: str) -> ApiKey:
        """The key with this id (revoked or not)."""
        with self.catalog.connect() as db:
            record = self._get(db, key_id)
        if record is None:
            raise NotFoundError(f"API key {key_id!r} not found")
        return record

    def list(self) -> list[ApiKey]:
        """Every key, oldest first, revoked ones included (with revoked_at set)."""
        with self.catalog.connect() as db:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created_at, id").fetchall()
            return [self._record(db, row) for row in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key for good. Idempotent: revoking again keeps the first revoked_at."""
        with self.catalog.transaction() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utc_now(), key_id),
            )
            record = self._get(db, key_id)
        if record is None:
            raise NotFoundError(f"API key {key_id!r} not found")
        return record

    def _get(self, db: Connection, key_id: str) -> ApiKey | None:
        row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        return None if row is None else self._record(db, row)

    @staticmethod
    def _record(db: Connection, row: Any) -> ApiKey:
        bound = db.execute(
            "SELECT n.id, n.name FROM api_key_namespaces k JOIN namespaces n"
            " ON n.id = k.namespace_id WHERE k.key_id = ? ORDER BY k.position",
            (row["id"],),
        ).fetchall()
        return ApiKey(
            key_id=row["id"],
            name=row["name"],
            namespaces=[Namespace(id=ns["id"], name=ns["name"]) for ns in bound],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )


def _tag(key: str) -> str:
    return key[3 : 3 + TAG_LENGTH]


def _scrypt(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
