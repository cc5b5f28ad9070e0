"""The training probe: drawn from the training loader (its first batches where the dataset has no length), collated
only as far as a run uses it, drawn again for every fit."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lightning_gensens import GeneralizationMonitor
from lightning_gensens.callbacks.probe import TrainingProbe
from lightning_gensens.data import ArrayDataModule
from lightning_gensens.models import Classifier, small_cnn
from tests.callbacks.conftest import make_model, make_trainer


def _probe(source=None, size=5):
    return TrainingProbe(
        size, batch_size=2, seed=0, batch_to_xy=lambda b: (b[0], b[1] if len(b) > 1 else None), source=source
    )


def test_empty_or_unsized_probe_source():
    """Lightning stops before validating on an empty train loader, so the probe draw is checked directly."""
    empty = SimpleNamespace(
        train_dataloader=DataLoader(TensorDataset(torch.zeros(0, 3)), batch_size=2), global_rank=0, world_size=1
    )
    with pytest.raises(ValueError, match="training dataset is empty"):
        _probe().get(empty)

    class Stream(IterableDataset):
        def __iter__(self):
            for i in range(100):
                yield torch.full((3,), float(i)), torch.tensor(i)

    stream = SimpleNamespace(train_dataloader=DataLoader(Stream(), batch_size=4), global_rank=0, world_size=1)
    batches = _probe().get(stream)  # an iterable dataset: its first batches, up to `size` samples
    assert torch.equal(torch.cat([x for x, _ in batches])[:, 0], torch.arange(8.0))
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(8))
    nothing, probe = SimpleNamespace(train_dataloader=None, global_rank=0, world_size=1), _probe()
    assert probe.get(nothing) == [] and probe.missing  # trainer.validate() measures without it


def test_a_map_style_probe_collates_only_the_batches_a_run_uses():
    class Counted(TensorDataset):
        reads = 0

        def __getitem__(self, i):
            Counted.reads += 1
            return super().__getitem__(i)

    data = Counted(torch.randn(20, 3), torch.arange(20))
    trainer = SimpleNamespace(train_dataloader=DataLoader(data, batch_size=8), global_rank=0, world_size=1)
    probe = _probe(size=12)
    assert probe.sizes(trainer) == [2] * 6 and Counted.reads == 0  # drawn: indices only
    assert len(probe.get(trainer, 2)) == 2 and Counted.reads == 4
    assert [len(y) for _, y in probe.get(trainer)] == [2] * 6 and Counted.reads == 12


def test_probe_is_drawn_again_for_every_fit(tmp_path, digits):
    monitor = GeneralizationMonitor(budget=None, measures=["output_sensitivity"], probe_size=100)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=1)
    trainer.fit(make_model(digits), digits)
    first = monitor.probe.get(trainer)[0][0]
    images = ArrayDataModule("digits", image=True)  # other data with another shape
    L.seed_everything(0, verbose=False)
    trainer = make_trainer(tmp_path / "2", [monitor], max_epochs=1)
    trainer.fit(Classifier(small_cnn(1, 8, 10, width=4)), images)
    assert monitor.probe.get(trainer)[0][0].shape[1:] == (1, 8, 8) != first.shape[1:]
