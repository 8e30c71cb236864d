"""The searcher on a real Optuna study, without Tune: a stepped α stays on the α grid, so a trial's α is one of the
points its own α path measures (no extra evaluation), and only lattice points reach the study."""

from rift_sweep.orchestration.sweep import make_searcher, paper_point, trial_choice

STEPPED = {"lr": {"low": 0.001, "high": 0.1, "log": True}, "alpha": {"low": 0.0, "high": 1.0, "step": 0.2}}
GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_a_stepped_alpha_is_suggested_on_the_grid_and_names_the_grids_value(digits_config):
    config = digits_config(search={"space": STEPPED, "num_samples": 12}, alpha={"grid": GRID})
    searcher = make_searcher(config, ["conv1"])
    suggested = [searcher.suggest(f"t{i}") for i in range(12)]
    assert suggested[0] == {"lr": config.finetune.lr, "alpha": 0.8}  # the paper's point first
    for params in suggested:
        _, _, alpha = trial_choice(config, params, ["conv1"])
        assert alpha in GRID  # the grid's own float, e.g. 0.6 for Optuna's 0.6000000000000001
    assert len({p["alpha"] for p in suggested}) > 1


def test_the_paper_point_snaps_to_the_lattice(digits_config):
    space = {**STEPPED, "alpha": {"low": 0.0, "high": 1.0, "step": 0.5}}
    config = digits_config(search={"space": space}, alpha={"grid": [0.0, 0.5, 1.0]})
    assert paper_point(config, ["conv1"])["alpha"] == 1.0  # the lattice point nearest the paper's 0.8


def test_only_path_points_on_the_lattice_reach_the_study(digits_config):
    grid = [0.0, 0.1, 0.2, 0.3, 0.4]
    space = {**STEPPED, "alpha": {"low": 0.0, "high": 0.4, "step": 0.2}}
    config = digits_config(search={"space": space}, alpha={"grid": grid})
    searcher = make_searcher(config, ["conv1"])
    params = searcher.suggest("t0")
    path = [{"alpha": a, "std_acc": 80.0 - 10 * a, "rob_acc": 40.0 + 10 * a} for a in grid]
    own = next(row for row in path if row["alpha"] == params["alpha"])
    searcher.on_trial_complete("t0", {**params, **own, "alpha_path": path})
    study = searcher._ot_study
    added = sorted(t.params["alpha"] for t in study.trials if t.state.name == "COMPLETE")
    assert added == [0.0, 0.2, 0.4]  # 0.1 and 0.3 lie off the lattice: Optuna would refuse them
