import pytest
import torch

from rift_sweep.core.finetune import EVERY_LAYER, FinetuneSettings, FinetuneState, finetune_module
from rift_sweep.core.mrc import candidate_modules


def changed_entries(before, after):
    """Keys whose value differs; `after` may hold only some entries (a fine-tune's tuned entries)."""
    return {k for k in after if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("bn", ["frozen", "adapt"])
def test_only_the_chosen_module_changes(digits, fresh_digits_model, bn):
    model = fresh_digits_model
    module = candidate_modules(model)[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune_module(
        model, module, digits.train, digits.val, FinetuneSettings(lr=0.05, epochs=2, bn=bn), seed=0
    )
    changed = changed_entries(before, model.state_dict())
    assert f"{module}.weight" in changed
    bn_stats = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    if bn == "frozen":
        assert changed == {f"{module}.weight"} == set(result.best_state)  # the result holds only what changed
    else:
        assert changed - bn_stats == {f"{module}.weight"}
        assert changed & bn_stats  # the reference code's train() mode moves BatchNorm statistics
        assert set(result.best_state) == {f"{module}.weight"} | bn_stats
    assert changed_entries(model.state_dict(), result.best_state) == set()  # model holds the best epoch


def test_best_epoch_is_the_one_with_the_best_validation_accuracy(digits, fresh_digits_model):
    result = finetune_module(
        fresh_digits_model,
        candidate_modules(fresh_digits_model)[-1],
        digits.train,
        digits.val,
        FinetuneSettings(lr=0.05, epochs=3),
    )
    assert len(result.val_acc) == 3
    assert result.val_acc[result.best_epoch - 1] == max(result.val_acc)


def test_resuming_from_an_epoch_state_reproduces_the_uninterrupted_run(digits, digits_model, fresh_digits_model):
    module = candidate_modules(digits_model)[2]
    settings = FinetuneSettings(lr=0.05, epochs=3)
    saved: list[FinetuneState] = []

    def keep_first(state):
        if state.epochs_done == 1:
            saved.append(FinetuneState(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(state).items()}))

    full = finetune_module(fresh_digits_model, module, digits.train, digits.val, settings, seed=3, on_epoch=keep_first)
    fresh_digits_model.load_state_dict(digits_model.state_dict())
    resumed = finetune_module(fresh_digits_model, module, digits.train, digits.val, settings, seed=3, resume=saved[0])
    assert resumed.val_acc == full.val_acc
    assert changed_entries(full.best_state, resumed.best_state) == set()


def test_lr_drops_tenfold_at_half_the_epochs():
    s = FinetuneSettings(lr=0.01, epochs=10)
    assert [s.lr_at(e) for e in (0, 4, 5, 9)] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert FinetuneSettings(lr=0.01, epochs=1).lr_at(0) == 0.01


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("epochs", 0), ("bn", "train"), ("momentum", 1.0)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneSettings(**{field: value})


def test_a_failed_finetune_leaves_every_requires_grad_flag_as_found(digits, fresh_digits_model):
    from rift_sweep.core.data.datasets import Split

    model = fresh_digits_model
    model.fc1.weight.requires_grad_(False)  # a caller's own setting must survive too
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    three_channels = Split(digits.train.x.repeat(1, 3, 1, 1), digits.train.y)  # the 1-channel model cannot run it
    with pytest.raises(ValueError, match="expects images"):
        finetune_module(model, "conv2", three_channels, digits.val, FinetuneSettings(epochs=1), seed=0)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


@pytest.mark.parametrize("modules", [["conv2", "fc1"], EVERY_LAYER])
def test_several_modules_or_every_layer_train_together_and_only_they_change(digits, fresh_digits_model, modules):
    model = fresh_digits_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune_module(model, modules, digits.train, digits.val, FinetuneSettings(lr=0.05, epochs=1))
    changed = changed_entries(before, model.state_dict())
    parameters = {name for name, _ in model.named_parameters()}
    expected = parameters if modules == EVERY_LAYER else {f"{m}.weight" for m in modules}
    assert changed == expected == set(result.best_state)  # BatchNorm statistics stay frozen (bn: frozen)
