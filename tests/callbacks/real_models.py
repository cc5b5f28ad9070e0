"""Models the library was not designed around, built tiny from configs (no download): a Hugging Face BERT and a
regression MLP (the ResNet block with a reused in-place ReLU is ``lightning_gensens.models.ResidualNet``)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_gensens.data import TokenData


class TinyBert(L.LightningModule):
    """BertForSequenceClassification from a config, called as users do: ``self(**batch)`` returning a ModelOutput."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            num_labels=2,
        )
        torch.manual_seed(0)
        self.model = BertForSequenceClassification(config)

    def forward(self, **batch: Tensor):  # noqa: ANN201 - a ModelOutput
        return self.model(**batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(**batch).loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TokenData(96, seed=0), batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TokenData(64, seed=1), batch_size=32)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Regressor(L.LightningModule):
    """An MLP regressor on scikit-learn's diabetes data, one output, mean squared error."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
        y = (y - y.mean()) / y.std()
        data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
        self.train_set, self.val_set = torch.utils.data.random_split(data, [342, 100], torch.Generator().manual_seed(0))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return F.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]), batch_size=batch[0].shape[0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=32, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=50)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)
