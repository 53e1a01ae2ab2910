"""Run tags: who started a run is read back as one of the known triggers."""

from __future__ import annotations

from typing import get_args

import pytest

from export_pipeline.orchestration import tags


@pytest.mark.parametrize("trigger", get_args(tags.Trigger))
def test_a_known_trigger_tag_is_read_back(trigger: str) -> None:
    assert tags.trigger_of({tags.TRIGGER: trigger}) == trigger


@pytest.mark.parametrize("found", ["", "UI", "robot", "api ", "None"])
def test_an_unknown_trigger_tag_reads_as_ui(found: str) -> None:
    """Tags are free text (the launchpad lets anyone set one): they are never trusted."""
    assert tags.trigger_of({tags.TRIGGER: found}) == "ui"


def test_a_run_without_a_trigger_tag_reads_as_ui() -> None:
    assert tags.trigger_of({}) == "ui"
