"""The BERT workload of benchmarks/overhead.py: ``BertForSequenceClassification`` from a config, trained as users do
(``self(**batch)``, a ModelOutput) on synthetic token classification (is token 7 in the sequence?)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_gensens.data import TokenData

BERT = dict(vocab=50, length=32, hidden=64, layers=2, heads=4, intermediate=128, train=2048, val=512, batch=32)


class TokenDataModule(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train_set = TokenData(BERT["train"], BERT["length"], BERT["vocab"], seed=0)
        self.val_set = TokenData(BERT["val"], BERT["length"], BERT["vocab"], seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=BERT["batch"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class SmallBert(L.LightningModule):
    """``BertForSequenceClassification`` from a config, called as users do: ``self(**batch)`` returning a
    ModelOutput (``tests/callbacks/real_models.py::TinyBert``, wider and deeper so that training is not trivial)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=BERT["vocab"],
            hidden_size=BERT["hidden"],
            num_hidden_layers=BERT["layers"],
            num_attention_heads=BERT["heads"],
            intermediate_size=BERT["intermediate"],
            max_position_embeddings=BERT["length"],
            num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword
        )
        self.model = BertForSequenceClassification(config)

    def forward(self, **batch: Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(**batch).loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss, batch_size=batch["labels"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)
