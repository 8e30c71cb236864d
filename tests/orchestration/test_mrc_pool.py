"""Stage 1 on real Ray: a local instance, and ray.cluster_utils.Cluster for several nodes."""

import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from rift_sweep.core.errors import InputError
from rift_sweep.orchestration.mrc_pool import read_table, run_mrc_stage
from rift_sweep.orchestration.resources import gpus_requested, worker_shape
from rift_sweep.procedure.experiment import load_experiment
from rift_sweep.procedure.steps import score_modules

pytestmark = pytest.mark.slow

SLOW_MRC = {"mrc": {"epochs": 10, "batch_size": 16, "variant": "reference"}}  # seconds per module: time to kill


@pytest.fixture()
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_pool_matches_single_process_and_resume_computes_only_missing(local_ray, digits_config):
    config = digits_config()
    stage = run_mrc_stage(config, workers=2, progress=False)
    single = {
        r.module: r for r in score_modules(load_experiment(config), [r.module for r in stage.results], progress=False)
    }
    assert len(stage.results) == len(single) == len(stage.computed) == 5
    for result in stage.results:
        assert result.mrc == pytest.approx(single[result.module].mrc, rel=1e-4, abs=1e-6)
        assert result.relative_norm == pytest.approx(single[result.module].relative_norm, rel=1e-4, abs=1e-6)
    assert [r.mrc for r in stage.results] == sorted(r.mrc for r in stage.results)
    assert {r.module: r for r in read_table(stage.table_path)} == {r.module: r for r in stage.results}  # as returned
    assert pq.read_table(stage.table_path).num_rows == 5

    assert run_mrc_stage(config, workers=2, progress=False).computed == []  # all cached: nothing recomputed

    table = pq.read_table(stage.table_path)  # as if interrupted after three modules:
    pq.write_table(table.filter(pc.invert(pc.is_in(table["module"], pa.array(["conv2", "fc1"])))), stage.table_path)
    resumed = run_mrc_stage(config, workers=2, progress=False)
    assert sorted(resumed.computed) == ["conv2", "fc1"]
    assert {r.module for r in resumed.results} == {r.module for r in stage.results}

    changed = digits_config(mrc={"epsilon": 0.05})  # other inputs: another key, nothing reused
    assert len(run_mrc_stage(changed, workers=2, progress=False).computed) == 5


def test_impossible_requests_fail_fast(local_ray):
    start = time.monotonic()
    with pytest.raises(ValueError, match="no GPU"):
        worker_shape("cuda")
    with pytest.raises(ValueError, match="use --workers 2 or fewer"):
        worker_shape(workers=3)
    assert time.monotonic() - start < 5


def _run_in_thread(config, workers):
    box = {}

    def target():
        try:
            box["stage"] = run_mrc_stage(config, workers=workers, progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


def _wait_for_first_row(config, timeout=240):
    path_glob = config.output_path / "cache" / "mrc"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in path_glob.glob("*.parquet"):
            rows = pq.read_table(path).to_pylist()  # with where each module ran
            if rows:
                return rows[0]
        time.sleep(0.2)
    raise TimeoutError("no MRC result appeared")


def test_killing_an_actor_mid_module_still_scores_every_module(local_ray, digits_config):
    config = digits_config(**SLOW_MRC)
    thread, box = _run_in_thread(config, workers=2)
    first = _wait_for_first_row(config)
    os.kill(first["pid"], signal.SIGKILL)  # that actor has just picked up its next module
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    stage = box["stage"]
    assert len(stage.results) == 5 and stage.retries >= 1
    assert {r.module for r in stage.results} == {"conv1", "conv2", "conv3", "fc1", "fc2"}


def test_one_actor_per_gpu_and_a_node_leaving_mid_stage(gpu_cluster, digits_config):
    cluster, workers = gpu_cluster
    shape = worker_shape("auto")
    assert (shape.count, shape.num_gpus) == (2, 1)
    config = digits_config(device="auto", **SLOW_MRC)  # GPUs where the cluster has them
    thread, box = _run_in_thread(config, workers=None)
    first = _wait_for_first_row(config)
    leaving = next(w for w in workers if w.node_id.startswith(first["node"]))
    cluster.remove_node(leaving)
    thread.join(timeout=600)
    assert "error" not in box, box.get("error")
    stage = box["stage"]
    assert {r.module for r in stage.results} == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    assert (
        len({r["node"] for r in pq.read_table(stage.table_path).to_pylist()}) == 2
    )  # both GPU nodes worked, one actor each
    assert stage.retries >= 1


def test_a_gpu_request_the_cluster_can_never_meet_fails_at_once(gpu_cluster):
    with gpus_requested(2, timeout_s=10, poll_s=0.1):
        assert worker_shape("auto").count == 2
    start = time.monotonic()
    with pytest.raises(InputError, match="--gpus 3: this Ray cluster has 2 GPU.*no autoscaler"):
        with gpus_requested(3):  # nodes started by hand: nothing can add a third GPU, so no wait
            pass
    assert time.monotonic() - start < 15
