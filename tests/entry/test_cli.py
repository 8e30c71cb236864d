"""train-at and the paper's procedure through the real command line, on digits."""

import os

import pytest

from rift_sweep import cli, names
from rift_sweep.core.adversarial_training import ATSettings
from rift_sweep.core.errors import InputError
from rift_sweep.core.models.checkpoints import read_checkpoint_meta

from conftest import write_digits_config


def test_train_at_then_rift_prints_the_papers_tables(tmp_path, capsys):
    path = write_digits_config(tmp_path, tmp_path / "at.pt", adversarial_training={"epochs": 2})
    assert cli.main(["train-at", "--config", str(path), "--out", str(tmp_path / "at.pt")]) == 0
    meta = read_checkpoint_meta(tmp_path / "at.pt")
    assert meta["split"] == {"dataset": "digits", "val_size": 300, "split_seed": 0}
    assert meta["best_epoch"] in (1, 2) and 0 <= meta["val_rob_acc"] <= 100
    capsys.readouterr()

    assert cli.main(["rift", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    for heading in ("Module Robust Criticality", "fine-tuned module:", "α path (validation;", "AT+RiFT", "generated"):
        assert heading in out
    assert out.count("<- fine-tuned") == 1


def test_a_checkpoint_from_another_split_is_refused(tmp_path, digits_checkpoint, capsys):
    path = write_digits_config(tmp_path, digits_checkpoint, data={"split_seed": 1})
    assert cli.main(["rift", "--config", str(path)]) == 2
    assert "validation would overlap its training data" in capsys.readouterr().err


def test_missing_checkpoint_and_missing_data_are_clear_errors(tmp_path, capsys):
    path = write_digits_config(tmp_path, tmp_path / "nothing.pt")
    assert cli.main(["rift", "--config", str(path)]) == 2
    assert "nothing.pt" in capsys.readouterr().err
    path = write_digits_config(tmp_path, tmp_path / "nothing.pt", data={"dataset": "cifar10", "root": str(tmp_path)})
    assert cli.main(["train-at", "--config", str(path), "--out", str(tmp_path / "at.pt")]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "download" in err
    assert not (tmp_path / "at.pt").exists()


def test_paper_schedule_scales_to_short_runs():
    paper = ATSettings()
    assert [paper.lr_at(e) for e in (0, 99, 100, 104, 105, 109)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    short = ATSettings(epochs=22)  # milestones at 100/110 and 105/110 of the run: epochs 20 and 21
    assert [short.lr_at(e) for e in (19, 20, 21)] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="lr_milestones"):
        ATSettings(lr_milestones=(1.5,))


def test_a_bug_keeps_its_traceback_while_user_errors_are_one_line(tmp_path, digits_checkpoint, capsys, monkeypatch):
    from rift_sweep.procedure import paper

    path = write_digits_config(tmp_path, digits_checkpoint)

    def broken(exp, **kwargs):
        raise ValueError("an internal bug, not the user's input")

    monkeypatch.setattr(paper, "run_paper_procedure", broken)
    with pytest.raises(ValueError, match="internal bug"):  # not swallowed into "error: ..." and exit 2
        cli.main(["rift", "--config", str(path)])

    bad = write_digits_config(tmp_path, tmp_path / "missing.pt")
    assert cli.main(["rift", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err


def test_train_at_refuses_epochs_zero_and_an_unwritable_out_before_training(tmp_path, capsys):
    path = write_digits_config(tmp_path, tmp_path / "at.pt")
    assert cli.main(["train-at", "--config", str(path), "--out", str(tmp_path / "at.pt"), "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["train-at", "--config", str(path), "--out", str(tmp_path / "file" / "at.pt")]) == 2
    assert "not a writable folder" in capsys.readouterr().err


def test_sweep_finds_the_newest_stamped_folder_of_that_name_only(tmp_path, capsys):
    runs = tmp_path / "runs"
    for folder in ("demo-20261130-150348", "demo-20261130-155256", "demo-fast-20261201-090000", "demo-old"):
        (runs / folder).mkdir(parents=True)
        (runs / folder / names.RESOLVED_CONFIG).write_text("name: x\n")
    os.utime(runs / "demo-20261130-150348" / names.RESOLVED_CONFIG, (2e9, 2e9))  # newer, though stamped earlier
    assert cli.find_sweep("demo", runs) == (runs / "demo-20261130-150348").resolve()
    listed = capsys.readouterr().err  # the other folders of that sweep, to choose with --output
    assert "demo-20261130-155256" in listed and "demo-fast" not in listed and "demo-old" not in listed
    assert cli.find_sweep("demo-fast", runs) == (runs / "demo-fast-20261201-090000").resolve()
    with pytest.raises(InputError, match="no sweep named 'nosuch'"):
        cli.find_sweep("nosuch", runs)
