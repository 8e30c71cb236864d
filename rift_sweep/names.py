"""Every name shared across layers, in one place: metric keys, MLflow tags and prefixes, file names, filters.

A leaf module: it imports nothing, so the command line can read a filter string without loading torch or Ray.
"""

# Metrics of one model on one split (core.robustness.evaluate returns these keys).
STD_ACC = "std_acc"
ROB_ACC = "rob_acc"
OOD_ACC = "ood_acc"
OBJECTIVES = (STD_ACC, ROB_ACC, OOD_ACC)
AA_ACC = "aa_acc"  # AutoAttack (standard) robust accuracy on test: attack.final = autoattack
OOD_PER_CORRUPTION_PREFIX = "ood/"
IMAGES = "images"  # on how many images a model's accuracies were measured
ROB_IMAGES = "rob_images"  # on how many of them its rob_acc was (fewer: screened)
INTERVAL_SUFFIXES = ("_low", "_high")  # a 95 % interval beside an accuracy: std_acc_low, std_acc_high

# The searched parameters: Optuna's, Tune's and MLflow's name for each.
LR, EPOCHS, ALPHA, MODULE = "lr", "epochs", "alpha", "module"
TRIAL_PARAMS = (MODULE, LR, EPOCHS, ALPHA)

# A trial's interim reports (MLflow metrics, each at its own step) and its process.
FT_EPOCH = "epoch"  # fine-tuning epochs done
FT_VAL_ACC = "ft_val_acc"  # validation clean accuracy after that epoch
ALPHA_POINTS_DONE = "alpha_points_done"  # α points of the path measured so far
PID = "pid"

# Metric-name prefixes on MLflow runs.
TEST_PREFIX = "test_"  # a model run's test-split metrics (test_std_acc, test_vs_at_rob_p, ...)
VERSUS_PREFIX = "vs_at_"  # a model's paired change against the AT model: vs_at_std, vs_at_std_low, vs_at_std_p, ...


def at_prefix(split: str) -> str:
    """The AT model's metrics on the sweep's parent run: at_val_std_acc, at_test_rob_acc, ..."""
    return f"at_{split}_"


# MLflow tags.
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
SWEEP_TAG = "rift_sweep.sweep"  # marks a sweep's parent run: its name ...
OUTPUT_TAG = "rift_sweep.output"  # ... and its output folder (two sweeps may share a name on one server)
TRIAL_TAG = "rift_sweep.trial_id"
PID_TAG = "rift.pid"
MODULE_TAG = "rift.module"
MRC_TABLE_TAG = "rift.mrc_table"
FINETUNE_KEY_TAG = "rift.finetune_key"
FINETUNE_REUSED_TAG = "rift.finetune_reused"
CHECKPOINT_SHA_TAG = "rift.checkpoint_sha256"
MODEL_CODE_SHA_TAG = "rift.model_code_sha256"
KIND_TAG = "rift.kind"  # what a child run stands for: a Tune trial, or an evaluated model
KIND_TRIAL, KIND_MODEL = "trial", "model"
MODEL_KEY_TAG = "rift.model"  # a model run's model: "at", or "<fine-tune key>@<α>"
SWEEP_RUN_TAG = "rift.sweep_run"  # a model run's sweep (its parent run id): model runs nest under their trial
SCREENED_TAG = "rift.screened"  # a model whose validation robustness rests on a screened subset
PARETO_TAG = "pareto"
RECOMMENDED_TAG = "recommended"
MODEL_LOGGED_TAG = "rift.model_logged"
PARETO_FILTER = f"tags.{PARETO_TAG} = 'true'"  # for the MLflow UI's search box
RECOMMENDED_FILTER = f"tags.{RECOMMENDED_TAG} = 'true'"

# Files and folders under a sweep's output folder.
RESOLVED_CONFIG = "sweep_config.yaml"
PUBLISHED_FRONT = "front.json"  # the front as last published (procedure.published)
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
CACHE_DIR = "cache"
TUNE_DIR = "tune"
TUNE_NAME = "sweep"
