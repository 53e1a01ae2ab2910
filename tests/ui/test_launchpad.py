"""The Dagster launchpad in a real browser: config docs, a filtered csv export, a refused filter.

Starts `dagster dev` over a fresh demo collection and drives Debian's Chromium with Playwright,
as a person would: the run is launched from the launchpad, and its download link is read off
the run page. Screenshots land in build/ui/ whether the checks pass or not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from helpers import free_port, local_path, read_csv
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from export_pipeline.demo import demo_documents
from export_pipeline.orchestration import tags
from export_pipeline.orchestration.config import ExportConfig
from export_pipeline.orchestration.job import JOB_NAME

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium's own connections are refused here.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "ui"
BIN = Path(sys.executable).parent
LOCATION = "export_pipeline"  # workspace.yaml's location_name
CATEGORY = "science"  # one of export_pipeline.demo.CATEGORIES
SERVER_START_TIMEOUT = 120  # seconds; ~11 s on an idle 2-core machine
RUN_TIMEOUT = 180  # seconds; runs take 8-13 s through the queued coordinator

pytestmark = [
    pytest.mark.ui,
    pytest.mark.slow,  # dagster dev and Chromium: tens of seconds
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)",
    ),
]

VALID_CONFIG = f"""\
namespace: demo
collection: articles
format: csv
filters:
  AND:
    - field: metadata.category
      operator: eq
      value: {CATEGORY}
"""
BOGUS_CONFIG = VALID_CONFIG.replace("operator: eq", "operator: bogus")


@dataclass(frozen=True)
class DagsterUI:
    """A running `dagster dev` over its own demo home."""

    url: str
    dagster_home: Path
    log: Path

    @property
    def launchpad(self) -> str:
        return f"{self.url}/locations/{LOCATION}/jobs/{JOB_NAME}/playground"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextmanager
def _sigint_not_ignored() -> Iterator[None]:
    """Let children start with a default SIGINT even where this process ignores it.

    A shell's `cmd &` starts with SIGINT ignored, children inherit that, and `dagster dev`
    then never stops on SIGTERM: it interrupts its webserver and daemon with SIGINT.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # SIG_DFL in the exec'd child
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to `dagster dev`, which stops its webserver and daemon through their shutdown
    pipes; SIGKILL after 30 s; then SIGKILL to whatever of its process group is left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """`export-pipeline demo` into a fresh home, then `dagster dev` on a free loopback port."""
    if not CHROMIUM.exists():
        pytest.fail(f"CI must install Chromium ({CHROMIUM}): see .ci/run")
    root = tmp_path_factory.mktemp("dagster_ui")
    home, dagster_home = root / "home", root / "home" / "dagster"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EXPORT_PIPELINE_", "DAGSTER_"))
    }
    env |= {"EXPORT_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(dagster_home)}
    demo = subprocess.run(
        [str(BIN / "export-pipeline"), "demo"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, f"export-pipeline demo failed:\n{demo.stdout}\n{demo.stderr}"

    port = free_port()
    log = root / "dagster-dev.log"
    command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p"]
    with open(log, "wb") as out, _sigint_not_ignored():
        process = subprocess.Popen(
            [*command, str(port)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    ui = DagsterUI(f"http://127.0.0.1:{port}", dagster_home, log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert process.poll() is None, f"dagster dev exited early:\n{ui.log_tail()}"
            try:
                with urllib.request.urlopen(f"{ui.url}/server_info", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (
                f"dagster dev did not answer /server_info in {SERVER_START_TIMEOUT} s:\n"
                f"{ui.log_tail()}"
            )
            time.sleep(0.5)
        yield ui
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium (Playwright cannot download its own browsers here)."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page, with the UI's first-visit community modal dismissed whenever it shows."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.add_locator_handler(
        page.get_by_text("Join the Dagster community"),
        lambda: page.get_by_role("button", name="Skip").click(),
    )
    yield page
    context.close()


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.screenshot(path=str(SHOTS / name), full_page=True)
    except Exception as exc:  # a screenshot must never hide the real failure
        print(f"screenshot {name} failed: {exc}")


def _text(page: Page, chars: int = 2000) -> str:
    """What the page shows, for assertion messages."""
    try:
        return re.sub(r"\n+", " | ", page.inner_text("body"))[:chars]
    except Exception as exc:
        return f"<page text unavailable: {exc}>"


def _open_launchpad(page: Page, ui: DagsterUI) -> None:
    page.goto(ui.launchpad)
    # The code location loads after the webserver answers; the editor shows up once it has.
    expect(page.locator(".CodeMirror")).to_be_visible(timeout=90_000)
    expect(page.get_by_role("button", name="Launch Run")).to_be_visible()


def _type_config(page: Page, yaml_text: str) -> None:
    """Replace the run config as a person would: select all in the editor, then type."""
    expect(page.get_by_role("dialog")).to_be_hidden()  # a closing dialog swallows the click
    page.locator(".CodeMirror-lines").click()
    expect(page.locator(".CodeMirror-focused"), "the config editor took no focus").to_be_visible()
    page.keyboard.press("Control+A")
    # insert_text types the text as one input, so CodeMirror does not auto-indent it.
    page.keyboard.insert_text(yaml_text)
    shown = page.evaluate("document.querySelector('.CodeMirror').CodeMirror.getValue()")
    assert shown == yaml_text, f"the editor holds {shown!r}, not the typed config"


def _instance(ui: DagsterUI) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(ui.dagster_home))


def _wait_for_outcome(page: Page) -> str:
    """The run page's status tag once the run has ended (reloading if the page goes stale)."""
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        try:
            outcome.wait_for(state="visible", timeout=45_000)
            return outcome.inner_text().strip()
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the run did not end within {RUN_TIMEOUT} s: {_text(page)}"
                ) from None
            page.reload()


# One test, one `dagster dev`: pytest-xdist's --dist loadgroup cannot keep two tests on one
# worker under pytest 9.2 (pytest-xdist#1386), and a second server costs ~40 s and ~700 MB.
def test_launchpad_refuses_a_bad_filter_then_exports_a_filtered_csv(
    dagster_ui: DagsterUI, page: Page
) -> None:
    with _instance(dagster_ui) as instance:
        runs_before = instance.get_runs_count()
    try:
        _open_launchpad(page, dagster_ui)

        # The missing required fields are named, and the config docs describe each field.
        errors = page.get_by_text("Missing required config entries")
        expect(errors).to_contain_text("namespace", timeout=30_000)
        expect(errors).to_contain_text("collection")
        for field in ("namespace", "collection", "filters"):
            description = ExportConfig.model_fields[field].description
            assert description
            expect(page.get_by_text(description[:50]).first).to_be_visible()

        # "Scaffold missing config" writes the required fields into the editor.
        page.get_by_role("button", name="Scaffold missing config").click()
        page.get_by_role("button", name="Confirm").click()
        lines = page.locator(".CodeMirror-code")
        expect(lines).to_contain_text("namespace:")
        expect(lines).to_contain_text("collection:")

        # A bad operator: Dagster's schema sees `filters` as a free-form dict, so the editor
        # finds nothing wrong, but the job's config mapping refuses it before a run exists.
        _type_config(page, BOGUS_CONFIG)
        launch = page.get_by_role("button", name="Launch Run")
        expect(launch).to_be_enabled()
        launch.click()
        dialog = page.get_by_role("dialog")
        expect(dialog, f"no error dialog: {_text(page)}").to_contain_text("filters.AND.0.operator")
        expect(dialog).to_contain_text("Input should be 'eq'")
        ok = dialog.get_by_role("button", name="OK")
        ok.click(trial=True)  # waits out the fade-in, for the screenshot
        _shot(page, "launchpad-invalid-filter.png")
        assert "/playground" in page.url, page.url
        with _instance(dagster_ui) as instance:
            assert instance.get_runs_count() == runs_before, "a run was created for a bad filter"
        ok.click()

        _type_config(page, VALID_CONFIG)
        expect(page.get_by_text("No errors", exact=True)).to_be_visible()
        _shot(page, "launchpad-config.png")

        launch.click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"), timeout=60_000)
        run_id = page.url.rsplit("/", 1)[1]

        status = _wait_for_outcome(page)
        assert status == "Success", f"run {run_id} ended {status}: {_text(page)}"

        # The download link of report_export's metadata, as the run page shows it.
        link = page.locator('a[href^="file://"][href$="/documents.csv"]').first
        expect(link, f"no download link on the run page: {_text(page)}").to_be_visible(
            timeout=30_000
        )
        download_url = link.get_attribute("href")
        assert download_url
        expect(page.get_by_text(download_url, exact=True).first).to_be_visible()
    finally:
        _shot(page, "launchpad-run.png")

    # The same run, seen through Dagster's own API.
    with _instance(dagster_ui) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None, f"no run {run_id} in {dagster_ui.dagster_home}"
        assert run.job_name == JOB_NAME
        assert run.status == dg.DagsterRunStatus.SUCCESS, run.status
        assert run.tags.get("dagster/from_ui") == "true", run.tags
        assert run.tags.get(tags.TRIGGER) == "ui", run.tags
        assert run.tags.get(tags.COLLECTION) == "articles", run.tags
        records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert len(records) == 1, records
        materialization = records[0].asset_materialization
        assert materialization is not None
        metadata = materialization.metadata
        assert metadata["download_url"].value == download_url, metadata["download_url"]
        assert instance.get_runs_count() == runs_before + 1

    # The file behind the link holds exactly the demo documents of that category.
    expected = sorted(
        doc["document_id"]
        for doc in demo_documents(1000)
        if doc["metadata"]["category"] == CATEGORY
    )
    assert 0 < len(expected) < 1000
    assert local_path(download_url).is_file(), f"{download_url} names no file"
    header, *rows = read_csv(download_url)
    assert len(rows) == len(expected), (len(rows), len(expected))
    assert metadata["document_count"].value == len(expected)
    category = header.index("metadata.category")
    assert {row[category] for row in rows} == {CATEGORY}
    assert sorted(row[header.index("document_id")] for row in rows) == expected
