"""The MLflow UI that `rift-sweep ui` serves, in a real browser: headless Chromium driven by Playwright.

A small finished sweep; `rift-sweep ui` on a free port of 127.0.0.1; the experiment's runs table must show the
sweep's parent run, its trials once expanded, and exactly the trials tagged on the Pareto front when the search
box holds the filter `rift-sweep` prints. Uses Debian's /usr/bin/chromium (no browser download: never
`playwright install`). Screenshots land in the test's tmp folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import ray
from mlflow.tracking import MlflowClient

from rift_sweep import cli
from rift_sweep.config import load_config
from rift_sweep.names import PARETO_FILTER as UI_FILTER
from rift_sweep.orchestration.tracking import SweepTracker, child_runs

from conftest import free_port, wait_for, write_digits_config
from helpers import CHROMIUM, requires

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SPACE = {
    "lr": {"low": 0.001, "high": 0.1, "log": True},
    "epochs": {"low": 1, "high": 2},
    "alpha": {"low": 0.0, "high": 1.0},
}
NAME = "ui-sweep"

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="needs playwright (pip install playwright; no browser download: it drives the system Chromium)",
)
pytestmark = [pytest.mark.slow, requires("chromium")]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, digits_checkpoint):
    folder = tmp_path_factory.mktemp("ui-sweep")
    path = write_digits_config(
        folder, digits_checkpoint, name=NAME, search={"space": SPACE, "num_samples": 3, "max_concurrent": 2}
    )
    try:
        assert cli.main(["sweep", "--config", str(path)]) == 0
    finally:
        ray.shutdown()
    return SweepTracker(load_config(path))


@pytest.fixture(scope="module")
def ui_url(finished_sweep, tmp_path_factory):
    """`rift-sweep ui` serving the sweep; yields the experiment URL it prints."""
    log_path = tmp_path_factory.mktemp("ui") / "ui.log"
    port = free_port()
    # Unbuffered, so the URL is in the log while the server runs; MLflow's GenAI job runner is not needed
    # (and leaves a folder in /dev/shm per start).
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "w") as log:
        # Its own session: the CLI, `mlflow server` and its uvicorn worker get Ctrl-C together at the end.
        ui = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rift_sweep.cli",
                "ui",
                "--sweep",
                NAME,
                "--output",
                str(finished_sweep.config.output_path),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _healthy(port), timeout=60)
        printed = re.search(r"MLflow UI: (\S+)", log_path.read_text())
        assert printed, log_path.read_text()
        yield printed.group(1)
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_the_printed_url_opens_the_sweeps_runs(ui_url, page, finished_sweep, tmp_path):
    page.goto(ui_url)
    shown = _appears(page.get_by_role("link", name=NAME, exact=True), timeout_ms=20_000)
    page.screenshot(path=str(tmp_path / "printed_url.png"))
    assert shown, (
        f"`rift-sweep ui` printed {ui_url}, which opened {page.url} without the sweep's runs "
        f"(MLflow 3 opens a bare #/experiments/ID on its GenAI overview); the runs table is "
        f"{runs_table_url(ui_url, finished_sweep.experiment_id)}"
    )
    assert f"/experiments/{finished_sweep.experiment_id}/runs" in page.url


def test_parent_children_and_pareto_filter_in_the_runs_table(ui_url, page, finished_sweep, tmp_path):
    tracker = finished_sweep
    trials = child_runs(tracker.client, tracker.experiment_id, tracker.parent_run_id)
    pareto = MlflowClient(tracker.uri).search_runs([tracker.experiment_id], UI_FILTER)
    assert len(trials) == 3 and pareto and {r.info.run_id for r in pareto} <= {r.info.run_id for r in trials}

    page.goto(runs_table_url(ui_url, tracker.experiment_id))
    parent = page.get_by_role("link", name=NAME, exact=True)
    parent.wait_for(timeout=30_000)
    assert shown_trials(page) == set()  # the trials are nested under the parent, folded

    page.locator("[role=row]", has=parent).locator("button[data-component-id*='runnamecellrenderer']").click()
    sync_api.expect(trial_links(page)).to_have_count(len(trials))
    assert shown_trials(page) == {r.info.run_name for r in trials}
    page.screenshot(path=str(tmp_path / "expanded.png"))

    search = page.get_by_placeholder("metrics.rmse", exact=False)  # MLflow's own example query
    search.fill(UI_FILTER)
    search.press("Enter")
    sync_api.expect(trial_links(page)).to_have_count(len(pareto))
    assert shown_trials(page) == {r.info.run_name for r in pareto}
    assert parent.is_visible()  # the front's trials stay under their sweep
    page.screenshot(path=str(tmp_path / "pareto_filter.png"))


def runs_table_url(printed_url: str, experiment_id: str) -> str:
    """The "Model training" runs table: MLflow 3 opens a bare #/experiments/ID on its GenAI overview."""
    base = printed_url.split("#", 1)[0]
    return f"{base}#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def trial_links(page):
    return page.locator("[role=row] a", has_text=re.compile(r"^trial-"))


def shown_trials(page) -> set[str]:
    return set(trial_links(page).all_inner_texts())


def _appears(locator, timeout_ms: int) -> bool:
    try:
        locator.wait_for(timeout=timeout_ms)
    except sync_api.TimeoutError:
        return False
    return True


def _healthy(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
    except OSError:
        return False
