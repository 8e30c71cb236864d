"""The searcher on a real Optuna study, without Tune: α is searched among alpha.grid, so a trial's α is one of the
points its own α path measures, and every point of the path reaches the study."""

from rift_sweep import names
from rift_sweep.orchestration.searcher import make_searcher, paper_point
from rift_sweep.orchestration.trial import trial_choice
from rift_sweep.procedure.records import Accuracy, FineTune, Scores, TrialCost, TrialReport

LR = {"lr": {"low": 0.001, "high": 0.1, "log": True}}
GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def scores(std: float, rob: float) -> Scores:
    return Scores(Accuracy(std, std - 1, std + 1, 100), Accuracy(rob, rob - 1, rob + 1, 100))


def test_alpha_is_suggested_among_the_grid_after_the_papers_point(digits_config):
    config = digits_config(search={"space": LR, "num_samples": 12}, alpha={"grid": GRID})
    searcher = make_searcher(config, ["conv1"])
    suggested = [searcher.suggest(f"t{i}") for i in range(12)]
    assert suggested[0] == {"lr": config.finetune.lr, "alpha": 0.8}  # the paper's point first
    assert all(trial_choice(config, params, ["conv1"]).alpha in GRID for params in suggested)
    assert len({p["alpha"] for p in suggested}) > 1


def test_the_papers_point_takes_the_grid_point_nearest_its_alpha(digits_config):
    config = digits_config(search={"space": LR}, alpha={"grid": [0.0, 0.5, 1.0]})
    assert paper_point(config, ["conv1"])["alpha"] == 1.0  # nearest the paper's 0.8


def test_every_point_of_a_trials_path_reaches_the_study(digits_config):
    config = digits_config(search={"space": LR}, alpha={"grid": GRID})
    searcher = make_searcher(config, ["conv1"])
    params = searcher.suggest("t0")
    path = tuple((a, scores(80.0 - 10 * a, 40.0 + 10 * a)) for a in GRID)
    own = dict(path)[params["alpha"]]
    ft = FineTune("k", "conv1", params["lr"], config.finetune.epochs, "t0")
    report = TrialReport(ft, params["alpha"], own, path, reused=False, cost=TrialCost(1.0, 1.0, 2.0, 5, 1))
    searcher.on_trial_complete("t0", report.result())
    trials = [t for t in searcher._ot_study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["alpha"] for t in trials) == GRID  # the trial's own point and the rest of its path
    for trial in trials:
        assert trial.params["lr"] == params["lr"]
        assert trial.values == [80.0 - 10 * trial.params["alpha"], 40.0 + 10 * trial.params["alpha"]]


def test_alpha_left_to_the_rule_is_no_search_dimension(digits_config):
    config = digits_config(search={"space": LR}, alpha={"grid": GRID, "searched": False})
    params = make_searcher(config, ["conv1"]).suggest("t0")
    assert set(params) == {"lr"}
    assert trial_choice(config, params, ["conv1"]).alpha is None  # the trial reports the rule's α of its path


def test_a_trial_report_survives_tunes_flat_form():
    path = tuple((a, scores(80.0 - a, 40.0 + a)) for a in (0.5, 1.0))
    report = TrialReport(FineTune("k", "fc1", 0.01, 3, "t1"), 0.5, path[0][1], path, True, TrialCost(0, 1, 1, 0, 2))
    result = report.result()
    assert result[names.STD_ACC] == 79.5 and result[names.LR] == 0.01  # where Tune and Optuna read them
    assert TrialReport.from_result(result) == report
    assert TrialReport.from_result({names.FT_EPOCH: 1, names.FT_VAL_ACC: 50.0}) is None  # an interim report
