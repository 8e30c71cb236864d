from rift_sweep.config import load_config
from rift_sweep.names import OUTPUT_TAG, SWEEP_TAG
from rift_sweep.orchestration.tracking import SweepTracker

from conftest import write_digits_config


def test_a_sweep_is_its_name_and_its_folder_on_a_shared_store(tmp_path, digits_checkpoint):
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_digits_config(tmp_path, digits_checkpoint, tracking={"uri": store})
    first = SweepTracker(load_config(path, {"output_dir": str(tmp_path / "a")}))
    again = SweepTracker(load_config(path, {"output_dir": str(tmp_path / "a")}))
    other = SweepTracker(load_config(path, {"output_dir": str(tmp_path / "b")}))
    assert first.parent_run_id == again.parent_run_id != other.parent_run_id
    tags = first.client.get_run(first.parent_run_id).data.tags
    assert tags[SWEEP_TAG] == "digits-test" and tags[OUTPUT_TAG] == str(tmp_path / "a")
    params = first.client.get_run(first.parent_run_id).data.params
    assert params["model"] == "small_cnn" and params["mrc.variant"] == "paper"


def test_an_output_folder_with_a_quote_still_finds_its_parent_run(tmp_path, digits_checkpoint):
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    path = write_digits_config(tmp_path, digits_checkpoint, tracking={"uri": store})
    quoted = str(tmp_path / "it's here")
    first = SweepTracker(load_config(path, {"output_dir": quoted}))
    assert SweepTracker(load_config(path, {"output_dir": quoted})).parent_run_id == first.parent_run_id
