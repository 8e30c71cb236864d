"""The front's view in the MLflow UI and front.html in MLflow's artifact viewer, in headless Chromium.

A synthetic store shaped like a finished sweep (parent run, two trial runs, eight model runs: the AT model and seven
α points, three on the front, one recommended, one screened), the view tag of `ui_view` on its experiment and
`front_html`'s page on the parent run; `mlflow server` on a free port of 127.0.0.1; a fresh browser profile. Every
check reads the page as it first loads: nothing is clicked (the table's columns are read by scrolling the grid,
which renders only the columns in view). Screenshots: test-artifacts/ui/ and the test's tmp folder. Two quick checks
(the tag's encoding, the page's content) need no browser.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rift_sweep import names
from rift_sweep.config import load_config
from rift_sweep.core.robustness.statistics import wilson_interval
from rift_sweep.orchestration.tracking import SweepTracker
from rift_sweep.orchestration.ui_view import COLORS, artifact_url, view_tag, view_url
from rift_sweep.presentation.front_html import write_front_html
from rift_sweep.procedure.published import read_published
from rift_sweep.procedure.records import Accuracy, Change, FineTune, Front, Model, Scores, Trial, Versus

from conftest import free_port, wait_for, write_digits_config
from helpers import CHROMIUM, requires

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="needs playwright (pip install playwright; no browser download: it drives the system Chromium)",
)

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
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
VAL, TEST, SCREENED_IMAGES = 2000, 10000, 500
AT_VAL, AT_TEST = (78.1, 61.4), (77.7, 60.8)
# (trial, module, lr, epochs, α, validation std, validation rob, screened)
POINTS = [
    (1, "fc2", 1.2e-3, 4, 0.2, 78.5, 60.8, False),
    (1, "fc2", 1.2e-3, 4, 0.4, 80.3, 60.5, False),
    (1, "fc2", 1.2e-3, 4, 0.6, 81.2, 59.6, False),
    (1, "fc2", 1.2e-3, 4, 0.8, 81.0, 57.2, False),
    (2, "conv3", 3.5e-4, 2, 0.2, 78.6, 61.6, False),
    (2, "conv3", 3.5e-4, 2, 0.4, 79.2, 60.3, False),
    (2, "conv3", 3.5e-4, 2, 0.6, 80.1, 58.9, True),
]
ON_FRONT = {(1, 0.4), (1, 0.6), (2, 0.2)}  # the Pareto front of the points above (the AT model is dominated)
RECOMMENDED = (1, 0.4)  # largest std_acc with rob_acc >= 61.4 - 1.0
TOLERANCE = 1.0
TEST_SHIFT = (-0.5, -0.7)  # test figures of the tested models: validation's, a little lower


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str
    parent_run_id: str
    front: Front
    run_names: dict[str, str]  # model key -> run name


@pytest.mark.slow
@requires("chromium")
def test_the_view_opens_on_the_front_scatter(ui, store, page, tmp_path):
    page.goto(view_url(ui, store.experiment_id, sweep_run_id=store.parent_run_id))
    points = page.locator(".scatterlayer path.point")
    sync_api.expect(points).to_have_count(len(store.front.models), timeout=30_000)
    _screenshot(page, tmp_path, "front_view_chart.png")

    chart = page.locator("[data-testid='experiment-view-compare-runs-chart-area']")
    assert chart.get_by_text("std_acc vs. rob_acc").count() == 1  # the card's title
    assert chart.locator(".xtitle").text_content() == names.STD_ACC
    assert chart.locator(".ytitle").text_content() == names.ROB_ACC
    # Each model run drawn in its mlflow.runColor: the AT model black, the front red, the recommended one green.
    assert _fill_counts(points) == Counter(
        {COLORS["model"]: 4, COLORS["front"]: 2, COLORS["recommended"]: 1, COLORS["at"]: 1}
    )

    assert _listed_runs(page) == sorted(store.run_names.values())  # the model runs, not the trials or the sweep
    # The runs list is grouped by the pareto tag; the front's runs are also named as such.
    assert _front_group(page) == sorted(store.run_names[key] for key in store.front.on_front)


@pytest.mark.slow
@requires("chromium")
def test_the_table_tab_shows_the_accuracy_columns(ui, store, page, tmp_path):
    page.goto(view_url(ui, store.experiment_id, sweep_run_id=store.parent_run_id, table=True))
    page.locator("[role=columnheader]", has_text="rob_acc_high").first.wait_for(timeout=30_000)
    _screenshot(page, tmp_path, "front_view_table.png")
    assert _listed_runs(page) == sorted(store.run_names.values())
    assert _front_group(page) == sorted(store.run_names[key] for key in store.front.on_front)

    headers = _column_headers(page)
    accuracy = {f"{s}{a}{b}" for s in ("", "test_") for a in ("std_acc", "rob_acc") for b in ("", "_low", "_high")}
    assert accuracy | {"vs_at_std", "vs_at_rob", "lr", "epochs", "alpha", "module", "pareto"} <= headers
    assert not {"images", "rob_images", "vs_at_std_p"} & headers  # only the chosen columns


@pytest.mark.slow
@requires("chromium")
def test_front_html_renders_in_the_artifact_viewer(ui, store, page, tmp_path):
    page.goto(artifact_url(ui, store.experiment_id, store.parent_run_id, "front.html"))
    frame = page.locator("iframe.mlflow-html-iframe")
    frame.wait_for(timeout=30_000)
    assert frame.get_attribute("sandbox") == "allow-scripts"  # scripts, but no same-origin access
    figure = page.frame_locator("iframe.mlflow-html-iframe")
    sync_api.expect(figure.locator("svg g.point")).to_have_count(len(store.front.models), timeout=15_000)
    _screenshot(page, tmp_path, "front_html_artifact.png")

    assert figure.locator("g.point.front").count() == len(ON_FRONT) - 1  # the recommended one is drawn as such
    assert figure.locator("g.point.recommended").count() == 1
    assert figure.locator("g.point.screened").count() == 1
    assert figure.locator("line.tolerance").count() == 1
    tooltips = figure.locator("g.point > title").all_text_contents()
    recommended = next(t for t in tooltips if "(recommended" in t)
    assert "trial-1" in recommended and "lr 1.2e-03" in recommended and "α 0.40" in recommended
    assert re.search(r"validation: std 80\.30 % \[\d+\.\d\d, \d+\.\d\d\]", recommended)
    assert "test: std 79.80 %" in recommended
    assert any("robustness on 500 of 2000 images" in t for t in tooltips)


def test_view_tag_is_a_saved_view_mlflow_reads():
    key, value = view_tag([f"ood/corruption_{i}" for i in range(200)], sweep_run_id="a" * 32)
    envelope = json.loads(value)
    assert key == "mlflow.sharedViewState.rift-front-" + "a" * 32 and envelope["name"].startswith("RiFT front")
    assert len(value) < 20_000 and envelope["state"].startswith("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(envelope["state"].removeprefix("deflate;"))))
    assert state["searchFilter"] == "tags.`rift.kind` = 'model' AND tags.`rift.sweep_run` = '" + "a" * 32 + "'"
    scatter, *hidden = state["compareRunCharts"]
    assert (scatter["xaxis"]["key"], scatter["yaxis"]["key"]) == ("std_acc", "rob_acc") and len(hidden) == 200
    assert all(chart["deleted"] for chart in hidden)
    assert view_url("http://h:1/", "7", sweep_run_id="a" * 32).startswith(
        "http://h:1/#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=rift-front-a"
    )


def test_front_html_needs_no_script_and_marks_every_model(tmp_path):
    front = synthetic_front()
    page = write_front_html(front, tmp_path / "front.html").read_text()
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert page.count('<g class="point') == len(front.models)
    assert page.count('class="point front') == len(ON_FRONT) - 1 and page.count("point recommended") == 1
    without_recommendation = dataclasses.replace(front, recommended=None)
    assert "the AT model stands" in write_front_html(without_recommendation, tmp_path / "none.html").read_text()


# --- the synthetic sweep --------------------------------------------------------------------------------------


def _accuracy(value: float, images: int) -> Accuracy:
    return Accuracy(value, *wilson_interval(round(value * images / 100), images), images)


def _scores(std: float, rob: float, images: int, rob_images: int | None = None) -> Scores:
    return Scores(std=_accuracy(std, images), rob=_accuracy(rob, rob_images or images))


def _versus(std: float, rob: float, at: tuple[float, float], images: int) -> Versus:
    half = 100 * 1.96 * (0.1 / images) ** 0.5  # a paired interval's half-width when 10 % of the images disagree

    def change(points: float) -> Change:
        return Change(points, points - half, points + half, 1e-4 if abs(points) > half else 0.3)

    return Versus(change(std - at[0]), change(rob - at[1]))


def synthetic_front() -> Front:
    at = Model(None, 0.0, _scores(*AT_VAL, VAL), test=_scores(*AT_TEST, TEST))
    models = [at]
    for trial, module, lr, epochs, alpha, std, rob, screened in POINTS:
        finetune = FineTune(f"ft{trial}", module, lr, epochs, f"trial-{trial}")
        val = _scores(std, rob, VAL, SCREENED_IMAGES if screened else VAL)
        tested = {}
        if (trial, alpha) in ON_FRONT:
            test_std, test_rob = std + TEST_SHIFT[0], rob + TEST_SHIFT[1]
            tested = {
                "test": _scores(test_std, test_rob, TEST),
                "test_versus_at": _versus(test_std, test_rob, AT_TEST, TEST),
            }
        models.append(Model(finetune, alpha, val, _versus(std, rob, AT_VAL, VAL), **tested))
    key = {(int(m.finetune.trial_id[-1]), m.alpha): m.key for m in models[1:]}
    recommended = next(m for m in models if m.key == key[RECOMMENDED])
    return Front(models, frozenset(key[p] for p in ON_FRONT), recommended, (names.STD_ACC, names.ROB_ACC), TOLERANCE)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on an empty store, not waited for: it boots while `store` fills the store. Yields (store URI,
    base URL, artifact folder)."""
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # creates the tables before the server opens the database
    port = free_port()
    # MLflow's GenAI job runner is not needed (and leaves a folder in /dev/shm per start).
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--workers", "1"]
    command += ["--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with open(folder / "server.log", "w") as log:
        # Its own process group: the server and its uvicorn worker are stopped together.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield uri, f"http://127.0.0.1:{port}", folder / "artifacts"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def store(server, tmp_path_factory, digits_checkpoint) -> Store:
    """The synthetic front, logged by the sweep's own tracker (model runs, their colours and the UI view) under two
    trial runs, and front.html on the sweep's run."""
    uri, _, artifacts = server
    folder = tmp_path_factory.mktemp("synthetic")
    config = load_config(write_digits_config(folder, digits_checkpoint, tracking={"uri": uri}))
    tracker = SweepTracker(config)
    trials = []
    for finetune in dict.fromkeys(m.finetune for m in synthetic_front().models if m.finetune):
        tags = {
            names.PARENT_TAG: tracker.parent_run_id,
            names.KIND_TAG: names.KIND_TRIAL,
            names.TRIAL_TAG: finetune.trial_id,
        }
        run_id = tracker.client.create_run(tracker.experiment_id, run_name=finetune.trial_id, tags=tags).info.run_id
        tracker.log_metrics(run_id, {names.STD_ACC: 80.0, names.ROB_ACC: 60.0})
        tracker.client.set_terminated(run_id)
        trials.append(Trial(finetune.trial_id, run_id, finetune, 0.4, reused=False))
    front = tracker.log_models(synthetic_front(), trials)
    runs = {run.info.run_id: run.info.run_name for run in tracker.client.search_runs([tracker.experiment_id])}
    tracker.client.log_artifact(tracker.parent_run_id, str(write_front_html(front, artifacts.parent / "front.html")))
    tracker.finish_parent()
    return Store(
        uri, tracker.experiment_id, tracker.parent_run_id, front, {m.key: runs[m.run_id] for m in front.models}
    )


@pytest.fixture(scope="module")
def ui(server, store) -> str:
    """The base URL of the server, once it answers, on the filled store."""
    base_url = server[1]
    wait_for(lambda: _healthy(base_url), timeout=60)
    return base_url


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


# --- reading the page -------------------------------------------------------------------------------------------


def _listed_runs(page) -> list[str]:
    return sorted(page.locator("[role=row] a[href*='/runs/']").all_inner_texts())


def _front_group(page) -> list[str]:
    """The runs listed under the group of the `pareto` tag's value "true" (the list is grouped by that tag)."""
    rows = _rows(page)
    header, size = next(
        (i, int(m.group(1))) for i, row in enumerate(rows) if (m := re.search(r"Group: true\s+(\d+)", row))
    )
    return sorted(rows[header + 1 : header + 1 + size])


def _rows(page) -> list[str]:
    """Each row of the runs grid, top to bottom (ag-grid's row-index): a run's name, or a group's whole text."""
    cells = page.locator(".ag-pinned-left-cols-container [role=row]").evaluate_all(
        """rows => rows.map(r => [
            Number(r.getAttribute('row-index')), (r.querySelector("a[href*='/runs/']") || r).innerText.trim()
        ])"""
    )
    return [text for _, text in sorted(cells)]


def _column_headers(page) -> set[str]:
    """Every column header of the runs grid: it renders only the columns in view, so scroll it across."""
    scroller = page.locator(".ag-body-horizontal-scroll-viewport").first
    headers: set[str] = set()
    while True:
        headers |= {text.strip() for text in page.locator("[role=columnheader]").all_inner_texts()}
        moved = scroller.evaluate(
            "e => { const before = e.scrollLeft; e.scrollLeft += e.clientWidth; return e.scrollLeft > before; }"
        )
        if not moved:
            return headers
        page.wait_for_timeout(200)


def _fill_counts(points) -> Counter:
    """How many scatter markers have each fill colour (#rrggbb)."""
    fills = points.evaluate_all("nodes => nodes.map(n => getComputedStyle(n).fill)")  # "rgb(214, 39, 40)"
    return Counter("#{:02x}{:02x}{:02x}".format(*map(int, re.findall(r"\d+", fill)[:3])) for fill in fills)


def _screenshot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / name, SCREENSHOTS / name)


def _healthy(base_url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{base_url}/health", timeout=2).status == 200
    except OSError:
        return False


# --- a real sweep, and `rift-sweep ui` -----------------------------------------------------------------------------


@pytest.mark.slow
@requires("chromium")
def test_rift_sweep_ui_opens_a_finished_sweep_on_its_front(tmp_path, finished_digits_sweep, page):
    tracker = SweepTracker(finished_digits_sweep)
    front = read_published(tracker.config.output_path).front
    with _rift_sweep_ui(tmp_path, tracker.config.name, tracker.config.output_path) as (chart, table):
        page.goto(chart)  # as printed: no click from here on
        points = page.locator(".scatterlayer path.point")
        sync_api.expect(points).to_have_count(len(front.models), timeout=30_000)
        _screenshot(page, tmp_path, "sweep_front_chart.png")
        assert page.locator(".xtitle").text_content() == names.STD_ACC
        assert _front_group(page) == sorted(r for k, r in _run_names(tracker).items() if k in front.on_front)
        page.goto(table)
        page.locator("[role=columnheader]", has_text="rob_acc_high").first.wait_for(timeout=30_000)
        _screenshot(page, tmp_path, "sweep_front_table.png")
        accuracy = {f"{s}{a}{b}" for s in ("", "test_") for a in ("std_acc", "rob_acc") for b in ("", "_low", "_high")}
        assert accuracy | {"lr", "epochs", "alpha", "module"} <= _column_headers(page)


def _run_names(tracker: SweepTracker) -> dict[str, str]:
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{names.KIND_TAG}` = '{names.KIND_MODEL}'")
    return {run.data.tags[names.MODEL_KEY_TAG]: run.info.run_name for run in runs}


@contextmanager
def _rift_sweep_ui(tmp_path: Path, sweep: str, output: Path):
    """`rift-sweep ui` on a free port; yields the two URLs it prints (the front's chart, its table)."""
    port, log_path = free_port(), tmp_path / "ui.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "rift_sweep.cli",
        "ui",
        "--sweep",
        sweep,
        "--output",
        str(output),
        "--port",
        str(port),
    ]
    with open(log_path, "w") as log:  # its own session: the CLI's mlflow server and its worker stop together
        ui = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), timeout=60)
        printed = re.search(r"front: (\S+)\n\s+its table: (\S+)", log_path.read_text())
        assert printed, log_path.read_text()
        yield printed.group(1), printed.group(2)
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
