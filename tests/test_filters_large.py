"""Filters at the F4 limits run (docs/contract.md F4): the data that ran DuckDB out of memory.

Every case runs on an export's connection (512MB, 2 threads) and is checked against the
reference evaluator, in WHERE and as a projected column (how the engine evaluates it), and
as a column again compiled for the fields the documents' structures prove scalar (as an
export compiles it for its snapshot).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from reference import matches

from export_pipeline import duck
from export_pipeline.contract import ExportRequest
from export_pipeline.demo import demo_documents
from export_pipeline.engine.kinds import scalar_kinds
from export_pipeline.filter_models import MAX_CONDITIONS, FilterOperator
from export_pipeline.filters import compile_filter, filter_fields, install_macros

DEPTH = 16
FIELDS = {  # field -> a few of its values, so that conditions often match
    "metadata.title": ["Vector Search River", "Quantum Pasta Orbit", "River", "x"],
    "metadata.category": ["news", "science", "food", "NEWS"],
    "metadata.published_at": ["2024-03-01T00:00:00Z", "2024-07-15", "2024-12-31T23:00:00+02:00"],
    "metadata.rating": [0.5, 2.5, 4.99, 3],
    "metadata.views": [10, 500_000, 999_999, 1.5],
    "metadata.author.name": ["Ada", "alan", None],
    "tags": ["vector", "Quantum", "orbit", "pasta"],
    "score": [5, 0.25, "n/a", None, True],
}
WORDS = ["vector", "search", "river", "mountain", "quantum", "pasta", "league", "orbit"]


def documents(count: int) -> list[dict[str, Any]]:
    """The demo's documents (nested, mixed types, arrays, dates), without vectors."""
    docs = []
    for doc in demo_documents(count):
        doc.pop("_vectors")
        docs.append(doc)
    return docs


def condition(op: str, rng: random.Random, i: int) -> dict[str, Any]:
    """A condition of operator `op` on one of FIELDS (metadata.f<i> for exists/is_null)."""
    field = rng.choice(list(FIELDS))
    pick = rng.choice(FIELDS[field])
    word = rng.choice(WORDS)
    values: dict[str, Any] = {
        "eq": pick,
        "ne": pick,
        "in": [*rng.sample(FIELDS[field], 2), f"v{i}", i],
        "nin": [*rng.sample(FIELDS[field], 2), f"v{i}"],
        "contains": rng.choice([word, word[1:4].upper(), i % 50]),
        "starts_with": rng.choice([word[:3], "Q", f"{word}{i}"]),
        "ends_with": rng.choice([word[-2:], "s", f"{i}"]),
        "regex": rng.choice([f"^{word[:2]}", f"{word[-3:]}$|x{i}", f"[{word[:2]}]{{2}}.{i % 7}?"]),
        "exists": rng.random() < 0.5,
        "is_null": rng.random() < 0.5,
        "text": rng.choice([word, f"{word} {rng.choice(WORDS)}", f"w{i}"]),
    }
    for ordering in ("gt", "gte", "lt", "lte"):
        values[ordering] = pick if pick is not None and not isinstance(pick, bool) else i
    if op in ("exists", "is_null"):
        field = rng.choice([f"metadata.f{i}", field])
    return {"field": field, "operator": op, "value": values[op]}


def nested(conditions: list[Any], rng: random.Random) -> dict[str, Any]:
    """The conditions spread over a chain of AND/OR/NOT groups DEPTH levels deep."""
    share = len(conditions) // DEPTH
    node: dict[str, Any] = {"OR": conditions[(DEPTH - 1) * share :]}
    for level in reversed(range(DEPTH - 1)):
        key = ("AND", "OR", "NOT")[level % 3]
        node = {key: [*conditions[level * share : (level + 1) * share], node]}
        node["case_sensitive"] = rng.choice([True, False, None])
    return node


def paired(conditions: list[Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each condition ANDed with the id of a document of its own: the documents selected
    then depend on every condition's outcome on its document (a mix of true and false)."""
    ids = [doc["document_id"] for doc in docs]
    return {
        "OR": [
            {"AND": [item, {"field": "document_id", "value": ids[k % len(ids)]}]}
            for k, item in enumerate(conditions)
        ]
    }


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection like an export's: 512MB, 2 threads, spilling to a temp folder."""
    connection = duck.connect(temp_dir=tmp_path_factory.mktemp("duckdb"))
    install_macros(connection)
    yield connection
    connection.close()


def check(con: duckdb.DuckDBPyConnection, docs: list[dict[str, Any]], filters: Any) -> set[str]:
    """The SQL selects what the reference evaluator selects; return the matching ids."""
    model = ExportRequest.model_validate({"filters": filters}).filters
    expected = {doc["document_id"] for doc in docs if matches(doc, model)}
    compiled = compile_filter(model)
    con.execute("CREATE OR REPLACE TEMP TABLE docs(doc VARCHAR)")
    con.execute("INSERT INTO docs SELECT unnest(?)", [[json.dumps(doc) for doc in docs]])
    ids = "doc ->> '$.document_id'"
    where = con.execute(f"SELECT {ids} FROM docs WHERE {compiled.sql}", compiled.params)
    assert {row[0] for row in where.fetchall()} == expected
    projected = con.execute(f"SELECT {ids}, {compiled.sql} FROM docs", compiled.params)
    assert {i for i, selected in projected.fetchall() if selected} == expected
    shapes = con.execute("SELECT DISTINCT json_structure(doc)::VARCHAR FROM docs").fetchall()
    kinds = scalar_kinds([text for (text,) in shapes], filter_fields(model))
    specialised = compile_filter(model, kinds=kinds)
    assert specialised.sql != compiled.sql  # the demo's documents have scalar fields
    projected = con.execute(f"SELECT {ids}, {specialised.sql} FROM docs", specialised.params)
    assert {i for i, selected in projected.fetchall() if selected} == expected
    return expected


def test_or_of_300_eq_on_1000_documents(con: duckdb.DuckDBPyConnection) -> None:
    # a compiler that parsed the document per condition ran out of DuckDB's memory here
    docs = documents(1000)
    titles = [doc["metadata"]["title"] for doc in docs[:150]] + [f"t{i}" for i in range(150)]
    chosen = check(con, docs, {"OR": [{"field": "metadata.title", "value": t} for t in titles]})
    assert len(chosen) >= 150


@pytest.mark.slow
def test_every_field_its_own_condition(con: duckdb.DuckDBPyConnection) -> None:
    docs = documents(300)
    for i, doc in enumerate(docs):  # five fields each; those of the even documents match
        fields = [(i * 7 + j) % MAX_CONDITIONS for j in range(5)]
        doc["metadata"].update({f"f{k}": (k + i % 2) % 5 for k in fields})
    filters = {"OR": [{"field": f"metadata.f{k}", "value": k % 5} for k in range(MAX_CONDITIONS)]}
    assert len(check(con, docs, filters)) == 150


@pytest.mark.slow
@pytest.mark.parametrize("op", [op.value for op in FilterOperator])
def test_thousand_conditions_of_one_operator(con: duckdb.DuckDBPyConnection, op: str) -> None:
    rng = random.Random(op)
    conditions = [condition(op, rng, i) for i in range(MAX_CONDITIONS)]
    docs = documents(300)
    check(con, docs, {"OR": conditions})
    half = MAX_CONDITIONS // 2
    check(con, docs, {**paired(conditions[:half], docs), "case_sensitive": True})
    check(con, docs, paired(conditions[half:], docs))


@pytest.mark.slow
def test_thousand_regexes(con: duckdb.DuckDBPyConnection) -> None:
    # a connection per pattern and a parse per condition took minutes, then ran out of memory
    rng = random.Random(7)
    regexes = [condition("regex", rng, i) for i in range(MAX_CONDITIONS)]
    assert check(con, documents(200), {"OR": regexes})


@pytest.mark.slow
def test_thousand_mixed_conditions_nested_to_the_limit(con: duckdb.DuckDBPyConnection) -> None:
    rng = random.Random(16)
    ops = [op.value for op in FilterOperator]
    conditions = [condition(ops[i % len(ops)], rng, i) for i in range(MAX_CONDITIONS)]
    docs = documents(1000)
    check(con, docs, {"OR": conditions})
    check(con, docs, nested(conditions, rng))
    check(con, docs, paired(conditions[: MAX_CONDITIONS // 2], docs))


@pytest.mark.slow
def test_ten_thousand_documents(con: duckdb.DuckDBPyConnection) -> None:
    rng = random.Random(10)
    ops = [op.value for op in FilterOperator]
    filters = nested([condition(ops[i % len(ops)], rng, i) for i in range(MAX_CONDITIONS)], rng)
    # ten copies of 1,000 documents: the reference judges each body once
    bodies = documents(1000)
    model = ExportRequest.model_validate({"filters": filters}).filters
    kept = [doc["document_id"] for doc in bodies if matches(doc, model)]
    docs = [
        {**doc, "document_id": f"{doc['document_id']}-{n}"} for n in range(10) for doc in bodies
    ]
    compiled = compile_filter(model)
    con.execute("CREATE OR REPLACE TEMP TABLE docs(doc VARCHAR)")
    con.execute("INSERT INTO docs SELECT unnest(?)", [[json.dumps(doc) for doc in docs]])
    query = f"SELECT doc ->> '$.document_id' FROM docs WHERE {compiled.sql}"
    rows = con.execute(query, compiled.params).fetchall()
    assert {row[0] for row in rows} == {f"{id_}-{n}" for n in range(10) for id_ in kept}
