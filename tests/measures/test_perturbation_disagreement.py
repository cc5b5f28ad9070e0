"""The perturbation-disagreement measure: its estimate against the functional layer, nothing without a labelled
reference, the same number on two DDP ranks as in one process, and a fit with an unlabeled pool and a GELU model."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.capture import Captured
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.functional import perturbation_curves, perturbation_disagreement
from lightning_gensens.measures import Reference, Settings
from lightning_gensens.measures.perturbation_disagreement import PerturbationDisagreement
from lightning_gensens.models import Classifier
from tests.callbacks.conftest import make_trainer
from tests.helpers import run_ddp, toy_mlp

GRID = (0.05, 0.3, 1.0, 3.0)


def _x(seed: int, n: int) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference(loss: float = 0.9, error: float = 0.3) -> Reference:
    return Reference(torch.tensor(loss, dtype=torch.float64), torch.tensor(error, dtype=torch.float64), 3)


def _computed(measure, net, splits):
    metrics = {split: measure.make_metric(net, Settings(seed=4)) for split in splits}
    for split, x in splits.items():
        for part in x.split(16):
            measure.update(metrics[split], Captured(x=part, logits=net(part).detach()), net)
    return measure.compute(metrics, net, Settings(seed=4))


def test_the_estimate_is_the_functional_layers_on_the_reference_and_target_curves():
    net, measure = toy_mlp(), PerturbationDisagreement(sigmas=GRID, draws=3)
    computed = _computed(measure, net, {"train": _x(0, 50), "val": 2 * _x(1, 40)})
    estimate = measure.estimate(computed, _reference())["perturbation_disagreement"]
    ref = perturbation_curves(net, _x(0, 50), GRID, draws=3, seed=4)
    target = perturbation_curves(net, 2 * _x(1, 40), GRID, draws=3, seed=4)
    error, loss = perturbation_disagreement(ref, 0.3, target, GRID)
    assert float(estimate.error) == pytest.approx(float(error), abs=1e-12)
    assert float(estimate.loss) == pytest.approx(float(loss), rel=1e-12)
    assert measure.values(computed) == {}
    assert measure.relative_cost_for(net) == 3 * len(GRID)


def test_without_a_finite_reference_it_predicts_nothing():
    net, measure = toy_mlp(), PerturbationDisagreement(sigmas=GRID, draws=2)
    computed = _computed(measure, net, {"train": _x(0, 20), "val": _x(1, 20)})
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    assert measure.estimate(computed, Reference(nan, nan, 3)) == {}


def _ddp_estimate(rank: int, world_size: int) -> tuple[float, float]:
    net, measure = toy_mlp(), PerturbationDisagreement(sigmas=GRID, draws=2)
    splits = {"train": _x(10 + rank, 30 + 7 * rank), "val": _x(20 + rank, 25 - 4 * rank)}
    estimate = measure.estimate(_computed(measure, net, splits), _reference())["perturbation_disagreement"]
    return float(estimate.error), float(estimate.loss)


def test_two_ranks_compute_what_one_process_computes_on_their_union():
    per_rank = run_ddp(_ddp_estimate)
    assert per_rank[0] == per_rank[1]
    net, measure = toy_mlp(), PerturbationDisagreement(sigmas=GRID, draws=2)
    union = {
        "train": torch.cat([_x(10, 30), _x(11, 37)]),
        "val": torch.cat([_x(20, 25), _x(21, 21)]),
    }
    estimate = measure.estimate(_computed(measure, net, union), _reference())["perturbation_disagreement"]
    assert per_rank[0] == pytest.approx((float(estimate.error), float(estimate.loss)), rel=1e-12)


def test_a_fit_predicts_a_pool_of_a_gelu_model_and_leaves_training_unchanged(tmp_path):
    digits = ArrayDataModule("digits")

    def fit(measures):
        torch.manual_seed(0)
        model = Classifier(nn.Sequential(nn.Linear(digits.num_features, 16), nn.GELU(), nn.Linear(16, 10)))
        x, _ = digits.val_set.tensors
        pool = DataLoader(TensorDataset(x[:100] + 0.5 * torch.randn(100, x.shape[1])), batch_size=50)
        callbacks = (
            []
            if measures is None
            else [
                GeneralizationMonitor(
                    measures,
                    unlabeled={"noisy": pool},
                    budget=None,
                    probe_size=128,
                    strict=True,
                    recommend=dict.fromkeys(("error", "loss"), "perturbation_disagreement"),
                )
            ]
        )
        trainer = make_trainer(tmp_path, callbacks, max_epochs=2, limit_train_batches=4)
        trainer.fit(model, digits)
        return model, trainer

    plain, _ = fit(None)
    measured, trainer = fit([PerturbationDisagreement(sigmas=GRID, draws=2)])
    assert all(
        torch.equal(a, b) for a, b in zip(plain.state_dict().values(), measured.state_dict().values(), strict=True)
    )
    error = float(trainer.callback_metrics["gensens/pool/noisy/perturbation_disagreement/pred_test_error"])
    loss = float(trainer.callback_metrics["gensens/pool/noisy/perturbation_disagreement/pred_test_loss"])
    assert 0.0 <= error <= 1.0 and loss >= 0.0
    assert float(trainer.callback_metrics["gensens/pool/noisy/pred_test_error"]) == error  # recommended
    assert "gensens/perturbation_disagreement/pred_test_error" in trainer.callback_metrics
