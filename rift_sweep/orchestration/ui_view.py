"""The MLflow UI opened on a sweep's front: a view stored on the experiment, and the URLs that open it.

Relied on (MLflow 3.17.2), read in mlflow/mlflow's UI source under mlflow/server/js/src/experiment-tracking/, checked
against the minified bundle this version ships (mlflow/server/js/build/static/js/*.js) and in headless Chromium by
tests/orchestration/test_ui_view.py:

- constants.ts: EXPERIMENT_PAGE_VIEW_STATE_SHARE_TAG_PREFIX = "mlflow.sharedViewState.", URL parameter
  EXPERIMENT_PAGE_VIEW_STATE_SHARE_URL_PARAM_KEY = "viewStateShareKey". The stored state is applied only on
  "#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=<key>" (nothing pre-sets the plain
  experiment URL); "compareRunsMode=CHART" picks the chart tab. A URL that also holds a search facet (searchFilter,
  orderByKey, ...) skips the stored UI state, and the page writes those facets into its URL once loaded: a reload
  keeps the filter and order but loses the charts and grouping. Open the URL of `view_url` again instead.
- components/experiment-page/hooks/useSharedExperimentViewState.ts, utils/savedViewEnvelope.ts: the tag value is a
  saved-view envelope {name, createdAt, updatedAt, state} (plain JSON; listed by name in the page's Views menu)
  whose `state` is "deflate;" + base64(zlib(JSON)) (common/utils/StringUtils.ts textCompressDeflate: pako's zlib
  format). Tag values are capped at 20,000 characters.
- hooks/useExperimentPageSearchFacets.tsx (EXPERIMENT_PAGE_QUERY_PARAM_KEYS): searchFilter, orderByKey
  ("metrics.`std_acc`"), orderByAsc. models/ExperimentPageUIState.tsx (EXPERIMENT_PAGE_UI_STATE_FIELDS):
  selectedColumns and columnOrder ("metrics.`std_acc`", "params.`lr`", "tags.`pareto`"), runsHiddenMode
  ("SHOW_ALL": every loaded run in the charts, not the first 10), compareRunSections ({uuid, name, display,
  isReordered, columns, cardHeight}, types.ts ChartSectionConfig; unless reordered the last two are taken as "Model
  metrics" and "System metrics"), compareRunCharts, groupBy ({aggregateFunction, groupByKeys: [{mode: "tag",
  groupByData}]}, utils/experimentPage.group-row-utils.ts), useGroupedValuesInCharts. The bundle drops runsExpanded,
  runsPinned, runsHidden, runsVisibilityMap and autoRefreshEnabled from a shared view; child runs are listed flat
  once the runs are grouped (or ordered by a metric).
- components/runs-charts/runs-charts.types.ts: RunsChartsScatterCardConfig (type "SCATTER", xaxis/yaxis {key, type:
  "METRIC"}, runsCountToCompare, metricSectionId, deleted); updateChartAndSectionConfigs adds a bar chart for every
  metric key that has no chart yet, so each key gets a deleted one.
- The chart tab and the metric columns are never on screen together: in the chart tab the runs list keeps the Run
  Name column only (utils/experimentPage.column-utils.tsx, useRunsColumnDefinitions: "if (isComparingRuns) return
  columns"). `view_url` opens the chart tab; `table=True` the table of the same view.
- The runs page loads 100 runs at a time ("Load more"): over more model runs, the scatter shows the 100 with the
  highest std_acc until more are loaded.
- A run's `mlflow.runColor` tag is its colour in the runs list and every chart (hooks/useExperimentRunColor.tsx).
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from collections.abc import Iterable

from rift_sweep import names

TAG_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "rift-front"
VIEW_NAME = "RiFT front"
RUN_COLOR_TAG = "mlflow.runColor"
COLORS = {"recommended": "#2ca02c", "front": "#d62728", "at": "#000000", "model": "#8c8c8c"}

_FRONT_SECTION, _MODEL_SECTION, _SYSTEM_SECTION = "rift-front", "rift-model-metrics", "rift-system-metrics"
_ACCURACY_COLUMNS = [
    f"{split}{name}{bound}"
    for split in ("", names.TEST_PREFIX)
    for name in (names.STD_ACC, names.ROB_ACC)
    for bound in ("", *names.INTERVAL_SUFFIXES)
] + [f"{split}{names.VERSUS_PREFIX}{name}" for split in ("", names.TEST_PREFIX) for name in ("std", "rob")]


def view_tag(metric_keys: Iterable[str] = (), *, sweep_run_id: str | None = None) -> tuple[str, str]:
    """The experiment tag (key, value) that stores the front's view: the model runs (of the sweep whose parent run is
    `sweep_run_id`, else of every sweep in the experiment) ordered by validation std_acc, grouped by the `pareto`
    tag, with the accuracy and parameter columns, and a scatter of validation std_acc against rob_acc over all of
    them. `metric_keys`: the metrics logged on model runs, whose automatic bar charts are hidden (any other lands in
    a folded section)."""
    state = json.dumps(_state(list(metric_keys), sweep_run_id), separators=(",", ":"))
    packed = "deflate;" + base64.b64encode(zlib.compress(state.encode(), 9)).decode()
    now = int(time.time() * 1000)
    name = VIEW_NAME if sweep_run_id is None else f"{VIEW_NAME} · {sweep_run_id[:8]}"
    envelope = {"name": name, "createdAt": now, "updatedAt": now, "state": packed}
    return TAG_PREFIX + _key(sweep_run_id), json.dumps(envelope)


def view_url(base_url: str, experiment_id: str, *, sweep_run_id: str | None = None, table: bool = False) -> str:
    """The URL that opens the view of `view_tag` (same `sweep_run_id`): on the chart tab, or the table."""
    mode = "TABLE" if table else "CHART"
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={_key(sweep_run_id)}&compareRunsMode={mode}"
    )


def artifact_url(base_url: str, experiment_id: str, run_id: str, path: str) -> str:
    """A run's artifact in the UI's viewer (e.g. the parent run's front.html), in the model-training pages."""
    run_page = f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{run_page}/artifacts/{path}?workflowType=machine_learning"  # without it: the GenAI pages


def run_color(*, at: bool, on_front: bool, recommended: bool) -> str:
    """The `mlflow.runColor` tag value that marks a model run's role in the runs list and the scatter."""
    return COLORS["recommended" if recommended else "front" if on_front else "at" if at else "model"]


def _key(sweep_run_id: str | None) -> str:
    return VIEW_KEY if sweep_run_id is None else f"{VIEW_KEY}-{sweep_run_id}"


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def _state(metric_keys: list[str], sweep_run_id: str | None) -> dict:
    search = f"tags.`{names.KIND_TAG}` = '{names.KIND_MODEL}'"
    if sweep_run_id is not None:
        search += f" AND tags.`{names.SWEEP_RUN_TAG}` = '{sweep_run_id}'"
    columns = (
        [_column("metrics", name) for name in _ACCURACY_COLUMNS]
        + [_column("params", name) for name in names.TRIAL_PARAMS]
        + [_column("tags", name) for name in (names.PARETO_TAG, names.RECOMMENDED_TAG)]
    )
    scatter = {
        "uuid": "rift-front-scatter",
        "type": "SCATTER",
        "xaxis": {"key": names.STD_ACC, "type": "METRIC"},
        "yaxis": {"key": names.ROB_ACC, "type": "METRIC"},
        "runsCountToCompare": 100_000,
        "metricSectionId": _FRONT_SECTION,
        "deleted": False,
        "isGenerated": False,
    }
    hidden_bars = [
        {"uuid": f"rift-bar-{key}", "type": "BAR", "metricKey": key, "metricSectionId": _MODEL_SECTION, "deleted": True}
        for key in metric_keys
    ]
    return {
        "searchFilter": search,
        "orderByKey": _column("metrics", names.STD_ACC),
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": names.PARETO_TAG}]},
        "useGroupedValuesInCharts": False,
        "compareRunSections": [
            {
                "uuid": _FRONT_SECTION,
                "name": "Front",
                "display": True,
                "isReordered": False,
                "columns": 1,
                "cardHeight": 520,
            },
            {"uuid": _MODEL_SECTION, "name": "Model metrics", "display": False, "isReordered": False},
            {"uuid": _SYSTEM_SECTION, "name": "System metrics", "display": False, "isReordered": False},
        ],
        "compareRunCharts": [scatter, *hidden_bars],
        "isAccordionReordered": False,
    }
