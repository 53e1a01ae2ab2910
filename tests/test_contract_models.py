"""Request and response models: R1-R8, P1, F4 and A1, with the seed page as the reference."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import SEED_REQUEST, SEED_RESPONSE_FIELDS, seed_example

from export_pipeline.contract import RESPONSE_EXTENSIONS, ExportRequest, ExportResponse
from export_pipeline.engine.plan import parse_request
from export_pipeline.errors import InvalidInput
from export_pipeline.paths import validate_path


def rejected(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse `body`, expect a InvalidInput, return its details."""
    with pytest.raises(InvalidInput) as info:
        parse_request(body)
    assert isinstance(info.value.details, list) and info.value.details
    return info.value.details


def locs(body: dict[str, Any]) -> list[str]:
    return [d["loc"] for d in rejected(body)]


def cond(operator: str, value: Any = ..., field: str = "x") -> dict[str, Any]:
    condition: dict[str, Any] = {"field": field, "operator": operator}
    if value is not ...:
        condition["value"] = value
    return condition


def filters_with(*conditions: dict[str, Any]) -> dict[str, Any]:
    return {"filters": {"AND": list(conditions)}}


def nested(levels: int) -> dict[str, Any]:
    """`levels` LogicalOperators nested inside each other, one condition innermost."""
    node: dict[str, Any] = {"AND": [cond("eq", 1)]}
    for _ in range(levels - 1):
        node = {"AND": [node]}
    return node


# --- seed ------------------------------------------------------------------------------


def test_A1_R_seed_copy_matches_seed_example() -> None:
    request, response = seed_example()
    assert request == SEED_REQUEST
    assert set(response) == SEED_RESPONSE_FIELDS
    assert ExportResponse.model_validate(response).model_dump(mode="json").keys() == response.keys()


def test_R_seed_example_request_validates() -> None:
    request = parse_request(SEED_REQUEST)
    assert request.format == "parquet"
    assert request.include_vectors is False
    assert request.select_fields == ["document_id", "metadata.title", "metadata.category"]
    assert request.sample_size == 500000
    assert request.filters is not None
    assert request.filters.case_sensitive is True
    assert [c.field for c in request.filters.AND] == ["name", "age"]
    assert [c.field for c in request.filters.OR] == ["status", "role"]
    assert [c.field for c in request.filters.NOT] == ["department", "location"]


# --- R1-R8 -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, {}])
def test_R1_empty_body_is_parquet_without_vectors(body: dict[str, Any] | None) -> None:
    request = parse_request(body)
    assert request.format == "parquet"
    assert request.include_vectors is False
    assert request.select_fields is None
    assert request.filters is None
    assert request.sample_size is None


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_R2_known_formats_accepted(fmt: str) -> None:
    assert parse_request({"format": fmt}).format == fmt


@pytest.mark.parametrize("fmt", ["xml", "JSON", "Parquet", "jsonl", "", 1, None, ["json"]])
def test_R2_other_formats_rejected(fmt: Any) -> None:
    assert locs({"format": fmt}) == ["format"]


@pytest.mark.parametrize("value", [True, False])
def test_R3_include_vectors_bool(value: bool) -> None:
    assert parse_request({"include_vectors": value}).include_vectors is value


@pytest.mark.parametrize("value", ["yes", 2, [True], {"a": 1}])
def test_R3_include_vectors_non_bool_rejected(value: Any) -> None:
    assert locs({"include_vectors": value}) == ["include_vectors"]


@pytest.mark.parametrize("count", [1, 2, 100])
def test_R4_select_fields_one_to_hundred(count: int) -> None:
    paths = [f"f{i}" for i in range(count)]
    assert parse_request({"select_fields": paths}).select_fields == paths


def test_R4_select_fields_null_accepted() -> None:
    assert parse_request({"select_fields": None}).select_fields is None


@pytest.mark.parametrize("count", [0, 101])
def test_R4_select_fields_count_out_of_range_rejected(count: int) -> None:
    assert locs({"select_fields": [f"f{i}" for i in range(count)]}) == ["select_fields"]


def test_R4_select_fields_not_a_list_rejected() -> None:
    assert "select_fields" in locs({"select_fields": "metadata.title"})


@pytest.mark.parametrize("path", ["-a", "a..b", "", "a b", "a.$b", "a[0]", "x" * 256])
def test_R4_P1_invalid_select_path_rejected_with_location(path: str) -> None:
    assert locs({"select_fields": [path]}) == ["select_fields.0"]


def test_R4_P1_invalid_second_select_path_located() -> None:
    assert locs({"select_fields": ["ok", "a.b.c.d.e.f.g.h.i.j.k"]}) == ["select_fields.1"]


@pytest.mark.parametrize("filters", [None, {}])
def test_R5_filters_null_or_empty_accepted(filters: Any) -> None:
    parse_request({"filters": filters})


@pytest.mark.parametrize("filters", ["name = 'John'", [{"field": "a", "value": 1}], 5, True])
def test_R5_filters_not_an_object_rejected(filters: Any) -> None:
    assert any(loc.startswith("filters") for loc in locs({"filters": filters}))


@pytest.mark.parametrize("size", [1, 2, 1_000_000])
def test_R6_sample_size_in_range_accepted(size: int) -> None:
    assert parse_request({"sample_size": size}).sample_size == size


def test_R6_sample_size_null_accepted() -> None:
    assert parse_request({"sample_size": None}).sample_size is None


@pytest.mark.parametrize("size", [True, False, 1.0, 5.5, 0, -1, 1_000_001, "10", [1]])
def test_R6_sample_size_non_strict_or_out_of_range_rejected(size: Any) -> None:
    assert locs({"sample_size": size}) == ["sample_size"]


@pytest.mark.parametrize("key", ["formt", "sampleSize", "select", "filter", "vectors", "limit"])
def test_R7_unknown_keys_rejected(key: str) -> None:
    assert locs({key: "json"}) == [key]


def test_R7_unknown_key_beside_valid_ones_rejected() -> None:
    assert locs({"format": "json", "include_vector": True}) == ["include_vector"]


@pytest.mark.parametrize("seed", [0, 1, 42, 2**63 - 1])
def test_R8_sample_seed_accepted(seed: int) -> None:
    request = parse_request({"sample_size": 3, "sample_seed": seed})
    assert request.sample_seed == seed


def test_R8_sample_seed_defaults_to_none() -> None:
    assert parse_request({}).sample_seed is None
    assert "sample_seed" not in SEED_REQUEST  # the seed body stays valid without it


# --- P1 --------------------------------------------------------------------------------

VALID_PATHS = [
    "document_id",
    "metadata.title",
    "_internal.created_at",
    "a",
    "0",
    "_",
    "a-b",
    "a_b-c.d-e",
    "A9.z_-",
    ".".join(["s"] * 10),
    "x" * 255,
    ".".join(["y" * 24] * 10) + "zzzzz",  # 10 segments, 245 characters
]
INVALID_PATHS = [
    "",
    ".",
    "a.",
    ".a",
    "a..b",
    "-a",
    "a.-b",
    "a b",
    "a.b c",
    "a[0]",
    "a.0]",
    "a'b",
    'a"b',
    "a;b",
    "a/b",
    "a$",
    "ä",
    "a\n",
    ".".join(["s"] * 11),
    "x" * 256,
    ".".join(["y" * 25] * 10) + "z" * 10,  # 10 segments but 269 characters
]


@pytest.mark.parametrize("path", VALID_PATHS)
def test_P1_valid_paths(path: str) -> None:
    assert validate_path(path) == path
    assert parse_request({"select_fields": [path]}).select_fields == [path]
    parse_request(filters_with(cond("eq", 1, field=path)))


@pytest.mark.parametrize("path", INVALID_PATHS)
def test_P1_invalid_paths(path: str) -> None:
    with pytest.raises(ValueError):
        validate_path(path)
    assert locs({"select_fields": [path]}) == ["select_fields.0"]
    assert locs(filters_with(cond("eq", 1, field=path))) == ["filters.AND.0.field"]


@pytest.mark.parametrize("path", ["a..b", "-x", "a b"])
def test_P1_F2_invalid_shorthand_key_rejected(path: str) -> None:
    assert any(loc.startswith("filters") for loc in locs({"filters": {path: 1}}))


# --- F4 --------------------------------------------------------------------------------


def test_F4_sixteen_levels_accepted() -> None:
    parse_request({"filters": nested(16)})


def test_F4_seventeen_levels_rejected() -> None:
    details = rejected({"filters": nested(17)})
    assert [d["loc"] for d in details] == ["filters"]
    assert "16" in details[0]["msg"]


def test_F4_deep_nesting_through_not_rejected() -> None:
    node: dict[str, Any] = cond("eq", 1)
    for _ in range(17):
        node = {"NOT": node}
    assert locs({"filters": node}) == ["filters"]


def test_F4_thousand_conditions_accepted() -> None:
    parse_request({"filters": {"OR": [cond("eq", i) for i in range(1000)]}})


def test_F4_thousand_and_one_conditions_rejected() -> None:
    details = rejected({"filters": {"OR": [cond("eq", i) for i in range(1001)]}})
    assert [d["loc"] for d in details] == ["filters"]
    assert "1000" in details[0]["msg"].replace(",", "")


def test_F4_conditions_counted_across_groups_and_shorthand() -> None:
    groups = [{"AND": [cond("eq", i) for i in range(100)]} for _ in range(10)]
    parse_request({"filters": {"OR": groups}})
    assert locs({"filters": {"OR": groups, "extra": 1}}) == ["filters"]


def test_F4_in_values_counted_across_the_filter() -> None:
    # ten lists of 10,000 (the limit of one list) are the limit of a filter: 100,000
    ten = [cond(op, list(range(10_000))) for op in ["in", "nin"] * 5]
    parse_request({"filters": {"OR": ten}})
    details = rejected({"filters": {"OR": ten, "NOT": cond("in", [1])}})
    assert [d["loc"] for d in details] == ["filters"]
    assert "100000" in details[0]["msg"]


def test_F4_F2_thousand_and_one_shorthand_conditions_rejected() -> None:
    assert locs({"filters": {f"k{i}": i for i in range(1001)}}) == ["filters"]


@pytest.mark.parametrize("operator", ["equals", "EQ", "like", "", "in_", None, 3])
def test_F4_unknown_operator_rejected_with_location(operator: Any) -> None:
    details = rejected(filters_with(cond(operator, 1)))
    assert [d["loc"] for d in details] == ["filters.AND.0.operator"]


def test_F4_unknown_operator_located_in_nested_group() -> None:
    body = {"filters": {"OR": [cond("eq", 1), {"NOT": [cond("eq", 2), cond("bogus", 3)]}]}}
    assert locs(body) == ["filters.OR.1.NOT.1.operator"]


def test_F4_unknown_key_in_condition_rejected() -> None:
    assert locs(filters_with({"field": "a", "operator": "eq", "value": 1, "vaule": 2})) == [
        "filters.AND.0.vaule"
    ]


@pytest.mark.parametrize(
    ("operator", "value"),
    [
        ("eq", [1]),
        ("eq", {"a": 1}),
        ("ne", [None]),
        ("eq", 2**63),
        ("gt", True),
        ("gte", False),
        ("lt", None),
        ("lte", [1]),
        ("gt", {"a": 1}),
        ("gt", float("inf")),
        ("gt", float("nan")),
        ("in", []),
        ("in", "abc"),
        ("in", 1),
        ("in", None),
        ("in", [[1]]),
        ("in", [{"a": 1}]),
        ("in", list(range(10_001))),
        ("nin", []),
        ("nin", [[1, 2]]),
        ("contains", None),
        ("contains", [1]),
        ("contains", {"a": "b"}),
        ("starts_with", 5),
        ("starts_with", None),
        ("ends_with", ["a"]),
        ("regex", "("),
        ("regex", "a[b"),
        ("regex", "(?P<x"),
        ("regex", 5),
        ("regex", None),
        ("exists", "yes"),
        ("exists", "true"),
        ("exists", 1),
        ("exists", None),
        ("is_null", "true"),
        ("is_null", 0),
        ("text", ""),
        ("text", 5),
        ("text", ["word"]),
    ],
)
def test_F4_value_of_wrong_kind_rejected(operator: str, value: Any) -> None:
    assert locs(filters_with(cond(operator, value))) == ["filters.AND.0.value"]


@pytest.mark.parametrize("operator", ["eq", "gt", "in", "contains", "regex", "text"])
def test_F4_missing_value_rejected(operator: str) -> None:
    assert locs(filters_with(cond(operator))) == ["filters.AND.0.value"]


@pytest.mark.parametrize(
    ("operator", "value"),
    [
        ("eq", None),
        ("eq", "x"),
        ("eq", 1.5),
        ("eq", True),
        ("ne", None),
        ("gt", 1),
        ("gte", "2024-01-01"),
        ("lt", -2.5),
        ("in", [1, "a", None, True, 2.5]),
        ("in", list(range(10_000))),
        ("nin", ["a"]),
        ("contains", "x"),
        ("contains", 3),
        ("contains", False),
        ("starts_with", ""),
        ("ends_with", "z"),
        ("regex", "^a.*b$"),
        ("regex", r"\d+"),
        ("exists", True),
        ("exists", False),
        ("is_null", False),
        ("text", "hello world"),
    ],
)
def test_F4_value_of_right_kind_accepted(operator: str, value: Any) -> None:
    parse_request(filters_with(cond(operator, value)))


@pytest.mark.parametrize("operator", ["exists", "is_null"])
def test_F4_bool_operators_default_true(operator: str) -> None:
    request = parse_request(filters_with(cond(operator)))
    assert request.filters.AND[0].value is True


def test_F4_operator_defaults_to_eq() -> None:
    request = parse_request(filters_with({"field": "a", "value": 1}))
    assert request.filters.AND[0].operator == "eq"


def test_F4_all_problems_reported_together() -> None:
    body = {
        "format": "xml",
        "filters": {"AND": [cond("bogus", 1), cond("gt", True)]},
        "sample_size": 0,
    }
    assert set(locs(body)) == {
        "format",
        "filters.AND.0.operator",
        "filters.AND.1.value",
        "sample_size",
    }


def test_F4_validation_error_message_names_locations() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_request(filters_with(cond("bogus", 1)))
    assert "filters.AND.0.operator" in info.value.message


@pytest.mark.parametrize("value", ["true", 1, "yes"])
def test_F3_case_sensitive_must_be_bool(value: Any) -> None:
    assert locs({"filters": {"case_sensitive": value, "a": 1}}) == ["filters.case_sensitive"]


# --- A1 --------------------------------------------------------------------------------


def test_A1_response_has_the_seed_fields_plus_the_optional_extensions() -> None:
    assert set(ExportResponse.model_fields) - set(RESPONSE_EXTENSIONS) == SEED_RESPONSE_FIELDS
    assert not any(ExportResponse.model_fields[name].is_required() for name in RESPONSE_EXTENSIONS)


def test_A1_vectors_fields_optional_and_null_by_default() -> None:
    response = ExportResponse(
        download_url="file:///x",
        s3_path="file:///x",
        format="json",
        document_count=0,
        file_size_bytes=0,
        exported_at="2023-11-07T05:31:56Z",
    )
    assert response.vectors_download_url is None
    assert response.vectors_s3_path is None
    assert set(response.model_dump()) == SEED_RESPONSE_FIELDS  # no `parts` key without parts
    assert set(response.model_dump(mode="json")) == SEED_RESPONSE_FIELDS


def test_A1_R_request_model_has_seed_fields_plus_optional_extensions() -> None:
    extensions = {"sample_seed", "max_file_size_bytes", "changed_since"}
    assert set(ExportRequest.model_fields) - extensions == set(SEED_REQUEST)
    assert not any(ExportRequest.model_fields[name].is_required() for name in extensions)


@pytest.mark.parametrize("value", [-1, "exp_short", "1", 1.0, True, "EXP_AAAAAAAAAAAAAAAA"])
def test_M5_changed_since_is_a_version_or_an_export_id(value: Any) -> None:
    with pytest.raises(InvalidInput):
        parse_request({"changed_since": value})
    assert parse_request({"changed_since": 0}).changed_since == 0
    assert parse_request({"changed_since": "exp_" + "a1" * 8}).changed_since == "exp_" + "a1" * 8
