"""Real models end to end with the default monitor: each fit completes, the measures defined for the model log
finite values, the others are skipped with a reason, and the actual test loss is the user's own validation loss.
Where a model brings its own difficulty the values are checked: a ReLU module applied several times is recorded at
each call, a compiled module measures as the uncompiled one, output sensitivity vanishes as σ → 0 through a
replayed masked call."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torchmetrics import SumMetric

from lightning_gensens import GeneralizationMonitor
from lightning_gensens import OutputSensitivity as OutputSensitivityCallback
from lightning_gensens.capture import ForwardCapture
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.measures import Measure, OutputSensitivity, Requirement
from lightning_gensens.models import Classifier, ResidualNet, mlp
from tests.callbacks.conftest import make_model, make_trainer
from tests.callbacks.real_models import Regressor, TinyBert

LABEL_FREE_GENERAL = ("output_sensitivity", "jacobian_norm", "fisher_rao_norm", "linf_norm", "spectral_norm")


def _finite(logged, key):
    return key in logged and math.isfinite(float(logged[key]))


def _skips(caplog):
    return {r.getMessage().split("skipping ")[1].split(":")[0] for r in caplog.records if "skipping" in r.getMessage()}


def test_tiny_bert_from_a_config(tmp_path, caplog):
    pytest.importorskip("transformers")
    caplog.set_level("INFO")
    monitor = GeneralizationMonitor(budget=None, probe_size=64)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(TinyBert())
    logged = trainer.callback_metrics
    for name in (*LABEL_FREE_GENERAL, "input_gradient_norm", "relative_flatness", "average_confidence"):
        assert _finite(logged, f"gensens/{name}/val"), name
    assert _finite(logged, "gensens/output_sensitivity/pred_test_loss")
    assert {"active_node_bound", "tangent_sensitivity", "region_sensitivity"} <= _skips(caplog)  # GELU
    assert math.isclose(float(logged["gensens/test_loss"]), float(logged["val_loss"]), rel_tol=1e-5)


def test_the_output_layer_s_input_of_a_transformer_and_a_resnet_is_captured():
    """The shift test's nearest-neighbour distance reads the classifier's input: BERT's pooled output (after its
    dropout), the ResNet's flattened pooled features."""
    pytest.importorskip("transformers")
    bert = TinyBert()
    batch = {k: v for k, v in next(iter(bert.val_dataloader())).items() if k != "labels"}
    with ForwardCapture(bert, head=True) as capture:
        bert(**batch)
        record = capture.pop()
    assert record.head.shape == (32, 16)
    assert torch.allclose(bert.model.classifier(record.head), record.logits, atol=1e-6)
    net = ResidualNet().eval()
    with ForwardCapture(net, head=True) as capture:
        net(torch.randn(5, 1, 8, 8))
        record = capture.pop()
    assert record.head.shape == (5, 64) and torch.allclose(net.head(record.head), record.logits, atol=1e-6)


def test_token_measures_act_on_the_embedding_output_with_the_attention_mask(tmp_path):
    """Output sensitivity vanishes as σ → 0 (like σ², the captured clean logits and the replayed noisy call agree
    on the mask), and the replayed call keeps the mask: the probe's loss equals a direct evaluation with the
    masks."""
    pytest.importorskip("transformers")
    monitor = GeneralizationMonitor(
        budget=None, measures=[OutputSensitivity(sigma=1e-4), "jacobian_norm"], probe_size=96, strict=True
    )
    wider = OutputSensitivityCallback(sigma=1e-2, probe_size=96, budget=None, strict=True, prefix="wider")
    model = TinyBert()
    trainer = make_trainer(tmp_path, [monitor, wider], max_epochs=1)
    trainer.fit(model)
    logged = trainer.callback_metrics
    for split in ("train", "val"):
        small = float(logged[f"gensens/output_sensitivity/{split}"])
        large = float(logged[f"wider/output_sensitivity/{split}"])
        assert large > 0 and small / large == pytest.approx(1e-4, rel=0.1)  # S ∝ σ²: σ 100× smaller
    data = model.train_dataloader().dataset
    model.eval()
    with torch.no_grad():
        out = model(input_ids=data.ids, attention_mask=data.mask, labels=data.labels)
    assert math.isclose(float(logged["gensens/train_loss"]), float(out.loss), rel_tol=1e-5)


def test_resnet_with_a_reused_inplace_relu(tmp_path, caplog):
    caplog.set_level("INFO")
    images = ArrayDataModule("digits", image=True)
    L.seed_everything(0, verbose=False)
    monitor = GeneralizationMonitor(budget=None, probe_size=128)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2)
    trainer.fit(Classifier(ResidualNet()), images)
    logged = trainer.callback_metrics
    for name in (*LABEL_FREE_GENERAL, "input_gradient_norm", "relative_flatness", "active_node_bound"):
        assert _finite(logged, f"gensens/{name}/pred_test_loss"), name
    assert {"tangent_sensitivity", "region_sensitivity"} <= _skips(caplog)  # no closed form for conv nets


class _Preactivations(Measure):
    """Keeps what each captured forward pass brought: its input and its ReLU pre-activations."""

    name = "preactivations"
    requires = Requirement.PREACTIVATIONS | Requirement.RELU
    relative_cost = 1.0

    def __init__(self):
        super().__init__()
        self.records = []

    def make_metric(self, net, settings):
        return SumMetric()

    def update(self, metric, record, net):
        self.records.append((record.x, [h.clone() for h in record.preacts]))
        metric.update(float(len(record.preacts)))

    def estimate(self, computed, reference):
        return {}


def _relu_inputs(net, x):
    """The input of every call of every nn.ReLU module of ``net`` in a forward pass of ``x``, in call order."""
    seen = []
    handles = [
        m.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
        for m in net.modules()
        if isinstance(m, torch.nn.ReLU)
    ]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_a_reused_inplace_relu_is_recorded_at_each_call(tmp_path):
    """ResidualNet applies its one nn.ReLU(inplace=True) three times: each call's pre-activation is recorded,
    before the in-place ReLU overwrites it, and the active-node counts sum over all three."""
    images = ArrayDataModule("digits", image=True)
    L.seed_everything(0, verbose=False)
    net = ResidualNet().eval()
    spy = _Preactivations()
    monitor = GeneralizationMonitor(
        budget=None, measures=[spy, "active_node_bound"], probe=images.train_dataloader(), probe_size=64, strict=True
    )
    (logged,) = make_trainer(tmp_path, [monitor]).validate(Classifier(net), images.val_dataloader())
    assert spy.records
    for x, preacts in spy.records:  # the probe's and the validation batches
        direct = _relu_inputs(net, x)
        assert len(direct) == 3  # the forward calls the one ReLU three times
        assert len(preacts) == len(direct)
        for recorded, called in zip(preacts, direct, strict=True):
            assert torch.equal(recorded, called)
            assert (recorded < 0).any()  # the input, not the in-place output
    val = [sum((h.flatten(1) > 0).sum(1) for h in _relu_inputs(net, x)) for x, _ in images.val_dataloader()]
    mean_active = float(torch.cat(val).double().mean())
    assert float(logged["gensens/active_node_bound/val_mean_active"]) == pytest.approx(mean_active, rel=1e-9)
    assert float(logged["gensens/preactivations/val"]) == 3 * len(images.val_dataloader())


def test_lightnings_boring_model(tmp_path, caplog):
    """One layer, unlabeled tensor batches, its own loss: label-free measures run, the others are skipped."""
    caplog.set_level("INFO")
    monitor = GeneralizationMonitor(budget=None, probe_size=32)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, limit_train_batches=4, limit_val_batches=2)
    with pytest.warns(UserWarning, match="carry no labels"):
        trainer.fit(BoringModel())
    logged = trainer.callback_metrics
    assert _finite(logged, "gensens/output_sensitivity/val") and _finite(logged, "gensens/jacobian_norm/val")
    assert "gensens/test_loss" not in logged
    assert {"input_gradient_norm", "relative_flatness", "active_node_bound", "tangent_sensitivity"} <= _skips(caplog)


COMPILED_MEASURES = ["trivial", "output_sensitivity", "input_gradient_norm", "relative_flatness", "active_node_bound"]
"""Captured logits, double backward through ``_orig_mod``, Hessian-vector products, ReLU hooks inside the module."""


def _measured(tmp_path, digits, backend: str | None) -> dict[str, float]:
    """Every value a one-epoch fit logs (but its timings), the MLP compiled with ``backend`` or not at all."""
    model = make_model(digits)
    if backend is not None:
        torch._dynamo.reset()
        model.net = torch.compile(model.net, backend=backend)
    monitor = GeneralizationMonitor(budget=None, measures=COMPILED_MEASURES, probe_size=100, module="net", strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(model, digits)
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("gensens/") and not key.endswith(("/seconds", "/overhead"))
    }


@pytest.fixture(scope="module")
def uncompiled(tmp_path_factory, digits) -> dict[str, float]:
    return _measured(tmp_path_factory.mktemp("uncompiled"), digits, None)


def _compiles(backend: str) -> bool:
    try:
        torch._dynamo.reset()
        torch.compile(torch.nn.Linear(2, 2), backend=backend)(torch.zeros(1, 2))
    except Exception:  # no C++ compiler for inductor, or no torch.compile on this platform
        return False
    return True


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_module_is_measured_as_the_uncompiled_one(tmp_path, digits, uncompiled, backend):
    """Measured through its original module (``_orig_mod``), a compiled MLP gives the values of the uncompiled one;
    only the validation logits come from the compiled forward, equal up to float rounding."""
    if not _compiles(backend):
        pytest.skip(f"torch.compile(backend={backend!r}) does not work here")
    compiled = _measured(tmp_path, digits, backend)
    assert compiled.keys() == uncompiled.keys()
    for name in COMPILED_MEASURES:
        assert any(key.startswith(f"gensens/{name}/") for key in compiled), name
    for key, value in uncompiled.items():
        assert compiled[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key


def test_regression_needs_its_loss_and_skips_the_classification_measures(tmp_path, caplog):
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="loss_fn"):
        make_trainer(tmp_path, [GeneralizationMonitor(budget=None, probe_size=64)], max_epochs=1).fit(Regressor())
    caplog.set_level("INFO")
    monitor = GeneralizationMonitor(budget=None, probe_size=64, loss_fn=torch.nn.functional.mse_loss)
    trainer = make_trainer(tmp_path / "mse", [monitor], max_epochs=2)
    trainer.fit(Regressor())
    logged = trainer.callback_metrics
    assert math.isclose(float(logged["gensens/test_loss"]), float(logged["val_loss"]), rel_tol=1e-5)
    assert "gensens/test_error" not in logged and "gensens/output_sensitivity_label_free/pred_test_loss" not in logged
    assert {"fisher_rao_norm", "average_confidence", "atc"} <= _skips(caplog)
    assert _finite(logged, "gensens/trivial/pred_test_loss")  # the yardstick of skill holds for regression too
    for name in ("output_sensitivity", "input_gradient_norm", "relative_flatness", "jacobian_norm"):
        assert _finite(logged, f"gensens/{name}/pred_test_loss"), name


def test_a_three_tensor_batch_asks_for_batch_to_xy(tmp_path, digits):
    class Grouped(Classifier):
        def validation_step(self, batch, batch_idx):
            x, group, y = batch
            self(x)

    class WithGroups(ArrayDataModule):
        def val_dataloader(self):
            x, y = self.val_set.tensors
            data = torch.utils.data.TensorDataset(x, torch.zeros_like(y), y)
            return torch.utils.data.DataLoader(data, batch_size=128)

    trainer = make_trainer(tmp_path, [GeneralizationMonitor(budget=None, measures=["linf_norm"])], max_epochs=1)
    with pytest.raises(TypeError, match="batch_to_xy"):
        trainer.fit(Grouped(mlp(64)), WithGroups("digits"))


def test_an_iterable_training_dataset_gives_the_probe_its_first_batches(tmp_path, digits):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            order = torch.randperm(len(digits.train_set))  # a new order every epoch
            for i in order:
                yield digits.train_set[i]

    monitor = GeneralizationMonitor(measures=["output_sensitivity", "trivial"], probe_size=100, budget=None)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3)
    loader = torch.utils.data.DataLoader(Stream(), batch_size=64)
    trainer.fit(Classifier(mlp(64, hidden=(32,))), loader, digits.val_dataloader())
    assert [int(row["epoch"]) for row in monitor.history] == [0, 1, 2]
    assert sum(x.shape[0] for x, _ in monitor.probe.get(trainer)) == 128  # whole batches up to probe_size


def test_dropout_a_held_loss_module_and_a_metric_attribute_never_disable_a_measure(tmp_path, digits, caplog):
    """Applicability is checked in eval mode, the state measuring runs in."""
    import torchmetrics

    class Usual(Classifier):
        def __init__(self):
            super().__init__(
                torch.nn.Sequential(
                    torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 10)
                )
            )
            self.criterion = torch.nn.CrossEntropyLoss()
            self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)

    caplog.set_level("INFO")
    L.seed_everything(0, verbose=False)
    monitor = GeneralizationMonitor(probe_size=64, budget=None)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(Usual(), digits)
    assert not _skips(caplog)
    for name in ("tangent_sensitivity", "region_sensitivity", "active_node_bound"):
        assert _finite(trainer.callback_metrics, f"gensens/{name}/pred_test_loss"), name


class _Samples(torch.utils.data.Dataset):
    """The digits as ``{"x": …, "y": …}`` samples."""

    def __init__(self, tensors, key="x"):
        self.tensors, self.key = tensors, key

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, i):
        return {self.key: self.tensors[0][i], "y": self.tensors[1][i]}


class _DictCalled(Classifier):
    """Called as ``self(batch)`` with the whole dict batch; returns ``{"logits": …}``."""

    def forward(self, batch):
        return {"logits": self.net(next(v for k, v in batch.items() if k != "y"))}

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch)["logits"], batch["y"])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.cross_entropy(self(batch)["logits"], batch["y"]))


def _dict_loaders(digits, key="x"):
    train = torch.utils.data.DataLoader(_Samples(digits.train_set.tensors, key), batch_size=64, shuffle=True)
    return train, torch.utils.data.DataLoader(_Samples(digits.val_set.tensors, key), batch_size=128)


def test_a_model_called_with_one_dict_is_measured(tmp_path, digits):
    trainer = make_trainer(tmp_path, [GeneralizationMonitor()], max_epochs=2)
    trainer.fit(_DictCalled(make_model(digits).net), *_dict_loaders(digits))
    for key in ("gensens/train_loss", "gensens/test_loss", "gensens/trivial/pred_test_loss"):
        assert _finite(trainer.callback_metrics, key), key


def test_a_model_called_with_one_dict_is_measured_as_called_with_its_tensor(tmp_path, digits):
    """The measures that call the model replay the dict call with their own input in it."""

    def measured(model, loaders):
        monitor = GeneralizationMonitor(measures=["output_sensitivity"], probe=loaders[0], probe_size=128)
        (logged,) = make_trainer(tmp_path, [monitor]).validate(model, loaders[1])
        return logged["gensens/output_sensitivity/train"], logged["gensens/output_sensitivity/val"]

    net = make_model(digits).net
    plain = measured(Classifier(net), (digits.train_dataloader(), digits.val_dataloader()))
    assert measured(_DictCalled(net), _dict_loaders(digits)) == pytest.approx(plain, rel=1e-5)


def test_a_forward_call_without_an_input_tensor_found_says_what_it_saw(tmp_path, digits):
    trainer = make_trainer(tmp_path, [GeneralizationMonitor()], max_epochs=3)
    with pytest.raises(RuntimeError, match=r"_DictCalled\(dict with keys \['pixels', 'y'\]\).*`module=`.*batch_to_xy="):
        trainer.fit(_DictCalled(make_model(digits).net), *_dict_loaders(digits, key="pixels"))


def test_a_skip_names_the_measure_once(tmp_path, caplog):
    caplog.set_level("INFO")
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path, [GeneralizationMonitor()], max_epochs=1, limit_train_batches=2)
    trainer.fit(Classifier(ResidualNet()), ArrayDataModule("digits", image=True))
    skips = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert {"tangent_sensitivity", "region_sensitivity"} <= _skips(caplog)
    for line in skips:
        name = line.split("skipping ")[1].split(":")[0]
        assert line.count(name) == 1 or "TangentSensitivity" in line, line
        assert f"skipping {name}: {name}:" not in line
