"""The fast (simdjson) and exact (Python) readings of a JSONL line agree (D3, D4)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import simdjson
from helpers import same_json
from hypothesis import given, settings
from hypothesis import strategies as st

from export_pipeline.store import lines

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
VECTORS = st.dictionaries(
    st.sampled_from(["dense", "sparse", "other"]),
    st.lists(st.floats(-1e6, 1e6) | st.integers(-5, 5), max_size=5)
    | st.fixed_dictionaries(
        {
            "indices": st.lists(st.integers(0, 9), max_size=3),
            "values": st.lists(st.floats(-1, 1), max_size=3),
        }
    )
    | SCALARS,
    max_size=3,
)


def _plain(value: Any) -> Any:
    """Vectors as plain lists of floats (what validation makes of them either way)."""
    if isinstance(value, np.ndarray):
        return [float(x) for x in value.tolist()]
    if isinstance(value, list) and all(type(x) in (int, float) for x in value):
        return [float(x) for x in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), VALUES, max_size=5), VECTORS | st.none() | SCALARS)
def test_D4_fast_and_exact_readings_agree(document: dict[str, Any], vectors: Any) -> None:
    document.pop(lines.VECTORS_KEY, None)
    if vectors is not None:
        document[lines.VECTORS_KEY] = vectors
    raw = json.dumps(document).encode()
    fast = lines.parse(simdjson.Parser(), raw)
    exact = lines._exact(raw)
    assert same_json(fast[0], exact[0])
    assert same_json(_plain(fast[1]), _plain(exact[1]))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 1, "a": 2}',
        b'{"_vectors": {"v": [[1], [2]]}}',
        b'{"_vectors": {"v": [1, true]}}',
        b'{"x": [[1, 2]], "_vectors": {"v": [1.5, 2]}}',
    ],
)
def test_D4_irregular_lines_read_exactly(raw: bytes) -> None:
    fast = lines.parse(simdjson.Parser(), raw)
    exact = lines._exact(raw)
    assert same_json(fast[0], exact[0]) and same_json(_plain(fast[1]), _plain(exact[1]))


def test_D4_out_of_range_numbers_are_problems() -> None:
    for raw in (
        b'{"a": 9223372036854775808}',
        b'{"big": 18446744073709551615}',
        b'{"a": 1e400}',
        b'{"a": NaN}',
        b"[1]",
    ):
        with pytest.raises(lines.LineProblem):
            lines.parse(simdjson.Parser(), raw)


def test_D4_sparse_vectors_take_the_buffer_path() -> None:
    """Sparse indices and values come back as numpy arrays, never as Python lists."""
    raw = b'{"id": 1, "_vectors": {"s": {"indices": [3, 0, 7], "values": [0.5, -1, 2.25]}}}'
    _, vectors = lines.parse(simdjson.Parser(), raw)
    indices, values = vectors["s"]["indices"], vectors["s"]["values"]
    assert isinstance(indices, np.ndarray) and indices.dtype == np.int64
    assert indices.tolist() == [3, 0, 7]
    assert isinstance(values, np.ndarray) and values.dtype == np.float64
    assert values.tolist() == [0.5, -1.0, 2.25]


@pytest.mark.parametrize("indices", [b"[1, 2.0]", b"[1, true]", b'[1, "2"]', b"[1, null]"])
def test_D4_sparse_indices_that_are_not_integers_stay_a_list(indices: bytes) -> None:
    """Left to validation, which refuses them as the exact reading does."""
    raw = b'{"_vectors": {"s": {"indices": ' + indices + b', "values": [1, 2]}}}'
    _, vectors = lines.parse(simdjson.Parser(), raw)
    assert vectors["s"]["indices"] == lines._exact(raw)[1]["s"]["indices"]
