"""The spec lives in the repository: every rule id the code, tests and docs cite is defined in
docs/contract.md, every document they point at exists, and the tests need nothing outside."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "docs" / "contract.md"
CITING = ["export_pipeline", "tests", "benchmarks", "README.md", "docs"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}

# The contract's id families (docs/contract.md): Data model, Request, Paths, Filters,
# Selection, Order, Writing, Answer, HTTP. An id stands alone (`F3`, `test_F3_...`,
# `F1-F7`), never inside a word or a dotted name (`"A9.z_-"` is a test path, not a rule).
RULE = re.compile(
    r"(?<![A-Za-z0-9])([ADFHOPRSW])(\d{1,2})(?:-\1?(\d{1,2}))?(?![A-Za-z0-9])(?!\.[A-Za-z0-9])"
)
DEFINED = re.compile(r"^#{2,4} ([A-Z]\d{1,2})\. ", re.MULTILINE)
# Citations of a markdown document by name (docs/contract.md, a note beside the repository...).
DOC_PATH = re.compile(r"(?<![\w/.])((?:docs/)?[A-Za-z_]+\.md)\b")


def citing_files() -> list[Path]:
    files: list[Path] = []
    for name in CITING:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        else:
            files += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
    return [f for f in files if "__pycache__" not in f.parts]


def cited_ids() -> dict[str, list[str]]:
    """Every rule id cited, with where (file:line); ranges such as F1-F7 count each id."""
    cited: dict[str, list[str]] = {}
    for file in citing_files():
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            for found in RULE.finditer(line):
                low = int(found.group(2))
                for n in range(low, int(found.group(3) or low) + 1):
                    where = f"{file.relative_to(ROOT)}:{number}"
                    cited.setdefault(f"{found.group(1)}{n}", []).append(where)
    return cited


def defined_ids() -> set[str]:
    return set(DEFINED.findall(CONTRACT.read_text(encoding="utf-8")))


def test_every_cited_rule_id_is_defined_in_docs_contract() -> None:
    defined = defined_ids()
    missing = {rule: where[:3] for rule, where in cited_ids().items() if rule not in defined}
    assert not missing, f"rule ids cited but not defined in docs/contract.md: {missing}"


def test_the_contract_defines_the_ids_the_repository_relies_on() -> None:
    cited = cited_ids()
    assert len(cited) >= 30  # the families are cited throughout, not by accident
    assert {"R1", "F3", "O3", "W7", "A1", "H4"} <= defined_ids()


def test_every_markdown_document_cited_exists_in_the_repository() -> None:
    broken = []
    for file in citing_files():
        text = file.read_text(encoding="utf-8")
        for found in DOC_PATH.finditer(text):
            name = found.group(1)
            candidates = [ROOT / name, file.parent / name, ROOT / "docs" / name]
            if not any(c.is_file() for c in candidates):
                line = text.count("\n", 0, found.start()) + 1
                broken.append(f"{file.relative_to(ROOT)}:{line}: {name}")
    assert not broken, f"documents cited that are not in the repository: {broken}"


def test_duckdb_facts_are_cited_from_the_repository() -> None:
    duck = (ROOT / "export_pipeline" / "duck.py").read_text(encoding="utf-8")
    assert "docs/environment.md" in duck
    assert "httpfs" in (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")


def test_tests_read_nothing_outside_the_repository() -> None:
    """No test reaches above the repository (`Path(__file__).parents[N]`) or into a
    sibling folder, so a fresh clone runs (and skips) exactly what it would here."""
    parents = re.compile(r"Path\(__file__\)\.resolve\(\)\.parents\[(\d+)\]")
    found = []
    for file in sorted((ROOT / "tests").rglob("*.py")):
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{file.relative_to(ROOT)}:{number}: {line.strip()}"
            for match in parents.finditer(line):
                if not file.resolve().parents[int(match.group(1))].is_relative_to(ROOT):
                    found.append(where)
            if file.name != "test_docs.py" and re.search(r"\.\./|\bseeds\b", line):
                found.append(where)
    assert not found, found


def test_seed_fixtures_are_in_the_repository() -> None:
    fixtures = ROOT / "tests" / "fixtures"
    assert (fixtures / "seed_request.json").is_file()
    assert (fixtures / "seed_response.json").is_file()


def test_readme_points_to_the_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in ("docs/contract.md", "docs/architecture.md"):
        assert doc in readme
