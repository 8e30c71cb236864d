"""The front's test evaluation on a real local Ray: a model's images split over the workers give exactly what one
call over the whole split gives."""

import numpy as np
import pytest
import ray

from rift_sweep.orchestration.front import front_pool, model_examples
from rift_sweep.procedure.experiment import load_experiment
from rift_sweep.procedure.records import AT_KEY

pytestmark = pytest.mark.slow


def test_chunks_over_the_workers_add_up_to_one_whole_call(digits_config):
    config = digits_config(attack={"test_runs": 2})  # the worst of 2: later runs attack only the survivors
    exp = load_experiment(config)
    whole = exp.examples(exp.at_state, "test", runs=2)
    ray.init(num_cpus=3, include_dashboard=False)  # 3 chunks of the test split
    try:
        with front_pool(config, exp) as pool:
            chunked, ood = model_examples(pool, "test", {AT_KEY: None})[AT_KEY]
    finally:
        ray.shutdown()
    assert 0 < whole.robust.sum() < whole.clean.sum()  # some examples broken, some not
    np.testing.assert_array_equal(chunked.clean, whole.clean)
    np.testing.assert_array_equal(chunked.robust, whole.robust)
    assert ood == exp.ood_accuracies(exp.at_state, "test")
