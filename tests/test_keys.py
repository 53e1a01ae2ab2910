"""API keys (docs/contract.md H1): shown once, stored only as salted hashes, bound to namespaces."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from export_pipeline.errors import InvalidInput, NotFoundError
from export_pipeline.settings import Settings
from export_pipeline.store import Namespace, Store
from export_pipeline.store import keys as keys_module

KEY = re.compile(r"^sk_[A-Za-z0-9_-]{32}$")


@pytest.fixture
def settings(catalog_settings: Settings) -> Settings:
    """Every test here runs with the catalog in SQLite and in PostgreSQL."""
    return catalog_settings


@pytest.fixture
def spaces(store: Store) -> tuple[Namespace, Namespace]:
    return store.catalog.create_namespace("team-a"), store.catalog.create_namespace("team-b")


def catalog_bytes(store: Store) -> bytes:
    """The catalog as stored: SQLite's main file plus its write-ahead log, or every row of
    every table of the PostgreSQL database."""
    if store.settings.catalog is None:
        path = store.catalog.path
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    with store.catalog.reading() as db:
        tables = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return b"".join(
            repr(db.execute(f"SELECT * FROM {table}").fetchall()).encode() for (table,) in tables
        )


def stored_hashes(store: Store) -> dict[str, tuple[str, str]]:
    with store.catalog.reading() as db:
        rows = db.execute("SELECT id, lookup, hash FROM api_keys").fetchall()
    return {key_id: (lookup, hashed) for key_id, lookup, hashed in rows}


def test_create_and_authenticate_round_trip(store: Store, spaces) -> None:
    team_a, team_b = spaces
    key, created = store.keys.create([team_a, team_b], "ci")
    assert KEY.match(key)
    assert re.fullmatch(r"key_[a-z0-9]{12}", created.key_id)
    assert created.name == "ci" and created.namespace_ids == [team_a.id, team_b.id]
    assert created.last_used_at is None and created.revoked_at is None

    started = time.perf_counter()
    found = store.keys.authenticate(key)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(f"authenticate took {elapsed_ms:.1f} ms")  # reported, never asserted
    assert found is not None and found.key_id == created.key_id
    assert found.namespaces == [team_a, team_b]
    assert found.last_used_at is not None and found.last_used_at >= found.created_at
    assert store.keys.get(created.key_id).last_used_at == found.last_used_at


def test_keys_are_random_and_well_formed(store: Store, spaces) -> None:
    made = [store.keys.create([spaces[0]], None)[0] for _ in range(5)]
    assert all(KEY.match(key) for key in made)
    assert len(set(made)) == 5


def test_catalog_holds_neither_key_nor_secret_only_a_salted_hash(store: Store, spaces) -> None:
    key, created = store.keys.create([spaces[0]], "leak-check")
    on_disk = catalog_bytes(store)
    assert key[3:11].encode() in on_disk  # the lookup tag is stored: we read the live data
    assert key.encode() not in on_disk
    assert key[11:].encode() not in on_disk  # the 24 secret characters
    lookup, hashed = stored_hashes(store)[created.key_id]
    assert lookup == key[3:11] and key[11:] not in hashed and hashed.startswith("scrypt$")


def test_same_lookup_tag_different_salted_hashes(
    store: Store, spaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    twins = iter(["sk_SameTag0" + "a" * 24, "sk_SameTag0" + "b" * 24])
    monkeypatch.setattr(keys_module, "generate_key", lambda: next(twins))
    first_key, first = store.keys.create([spaces[0]], None)
    second_key, second = store.keys.create([spaces[1]], None)
    hashes = stored_hashes(store)
    assert hashes[first.key_id][0] == hashes[second.key_id][0] == "SameTag0"
    assert hashes[first.key_id][1] != hashes[second.key_id][1]
    # Both rows share the tag; each key still finds its own record.
    assert store.keys.authenticate(first_key).key_id == first.key_id
    assert store.keys.authenticate(second_key).key_id == second.key_id
    # Even the same key hashed twice differs: a fresh salt each time.
    assert keys_module.hash_key(first_key) != keys_module.hash_key(first_key)


def test_wrong_secret_with_right_lookup_tag_is_refused(store: Store, spaces) -> None:
    key, _ = store.keys.create([spaces[0]], None)
    last = "A" if key[-1] != "A" else "B"
    assert store.keys.authenticate(key[:-1] + last) is None
    assert store.keys.authenticate(key[:11] + "x" * 24) is None


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "sk_",
        "sk_" + "a" * 31,
        "sk_" + "a" * 33,
        "sk_" + "a" * 31 + "!",
        "pk_" + "a" * 32,
        " sk_" + "a" * 32,
        "sk_" + "a" * 32 + "\n",
        None,
        b"sk_" + b"a" * 32,
    ],
)
def test_malformed_keys_are_refused(store: Store, spaces, candidate: Any) -> None:
    store.keys.create([spaces[0]], None)
    assert store.keys.authenticate(candidate) is None


def test_unknown_well_formed_key_is_refused(store: Store, spaces) -> None:
    store.keys.create([spaces[0]], None)
    assert store.keys.authenticate(keys_module.generate_key()) is None


def test_revoked_key_is_refused_and_revoking_is_idempotent(store: Store, spaces) -> None:
    key, created = store.keys.create([spaces[0]], None)
    kept, _ = store.keys.create([spaces[0]], None)
    first = store.keys.revoke(created.key_id)
    assert first.revoked_at is not None and not first.allows(spaces[0].id)
    assert store.keys.authenticate(key) is None
    assert store.keys.revoke(created.key_id).revoked_at == first.revoked_at
    assert store.keys.authenticate(kept) is not None  # other keys are untouched
    with pytest.raises(NotFoundError):
        store.keys.revoke("key_000000000000")


def test_list_never_shows_the_key_or_its_hash(store: Store, spaces) -> None:
    key, first = store.keys.create([spaces[0]], "one")
    _, second = store.keys.create(list(spaces), None)
    store.keys.revoke(second.key_id)
    listed = store.keys.list()
    assert [k.key_id for k in listed] == [first.key_id, second.key_id]
    assert listed[1].revoked_at is not None and listed[0].revoked_at is None
    assert listed[1].namespaces == list(spaces)
    dumped = json.dumps([k.model_dump() for k in listed])
    assert key not in dumped and key[11:] not in dumped and "scrypt" not in dumped


def test_namespace_binding(store: Store, spaces) -> None:
    team_a, team_b = spaces
    team_c = store.catalog.create_namespace("team-c")
    key, _ = store.keys.create([team_a, team_b, team_a], None)  # duplicates collapse
    found = store.keys.authenticate(key)
    assert found is not None and found.namespace_ids == [team_a.id, team_b.id]
    assert found.allows(team_a.id) and found.allows(team_b.id)
    assert not found.allows(team_c.id)
    assert not found.allows(team_a.name)  # ids only: the API resolves names first


def test_create_needs_existing_namespaces(store: Store, spaces) -> None:
    with pytest.raises(InvalidInput):
        store.keys.create([], None)
    with pytest.raises(NotFoundError):
        store.keys.create([Namespace(id="ns_000000000000", name="ghost")], None)
    assert store.keys.list() == []


def test_cli_round_trip(cli, tmp_path: Path, settings: Settings) -> None:
    _, team_a = cli("namespace", "create", "team-a")
    _, team_b = cli("namespace", "create", "team-b")
    code, made = cli("key", "create", "-n", "team-a", "-n", team_b["namespace_id"], "--name", "ci")
    assert code == 0 and KEY.match(made["key"]) and made["name"] == "ci"
    assert made["namespaces"] == [
        {"id": team_a["namespace_id"], "name": "team-a"},
        {"id": team_b["namespace_id"], "name": "team-b"},
    ]
    cli_store = Store(Settings(home=tmp_path / "home", catalog=settings.catalog))  # the CLI's
    found = cli_store.keys.authenticate(made["key"])
    assert found is not None and found.key_id == made["key_id"]

    code, listed = cli("key", "list")
    assert code == 0 and [k["key_id"] for k in listed["keys"]] == [made["key_id"]]
    assert made["key"] not in json.dumps(listed)  # shown once, at creation only
    assert set(listed["keys"][0]) == {
        "key_id", "name", "namespaces", "created_at", "last_used_at", "revoked_at",
    }  # fmt: skip
    assert listed["keys"][0]["last_used_at"] is not None

    code, revoked = cli("key", "revoke", made["key_id"])
    assert code == 0 and revoked == {"key_id": made["key_id"], "revoked": True}
    code, again = cli("key", "revoke", made["key_id"])
    assert code == 0 and again == revoked
    _, listed = cli("key", "list")
    assert listed["keys"][0]["revoked_at"] is not None


@pytest.mark.parametrize(
    ("argv", "code", "kind"),
    [
        (["key", "create", "-n", "team-a", "-n", "nobody"], 3, "NotFoundError"),
        (["key", "create"], 2, "ValidationError"),
        (["key", "revoke", "key_000000000000"], 3, "NotFoundError"),
        (["key", "frobnicate"], 2, "ValidationError"),
    ],
)
def test_cli_errors(cli, argv: list[str], code: int, kind: str) -> None:
    cli("namespace", "create", "team-a")
    got, out = cli(*argv)
    assert got == code and set(out) == {"error"} and out["error"]["type"] == kind
    _, listed = cli("key", "list")
    assert listed == {"keys": []}  # a failed create binds nothing
