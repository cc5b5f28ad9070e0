"""(f) A tiny Hugging Face BERT on synthetic token data, with the default monitor and no options.

The model is built from a ``BertConfig`` (random init, nothing downloaded) and called as users do,
``self(**batch)`` on dict batches of ``input_ids``, ``attention_mask`` and ``labels``, returning a ``ModelOutput``.
``GeneralizationMonitor()`` reads all of that as it is: measures that perturb or differentiate the input act on the
output of the input embedding, attention masks are replayed, and the measures defined only for ReLU networks are
skipped (BERT has GELU and Tanh) with an info line each. The task: does the marker token occur in the sequence?

    python examples/transformer_text.py [--epochs 6] [--out gensens_output/transformer_text]
"""

import argparse

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_gensens import GeneralizationMonitor

VOCAB, LENGTH, MARKER = 32, 16, 7


class MarkerTokens(Dataset):
    """Random token sequences, the last few possibly padded; the label is whether ``MARKER`` occurs unmasked."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=g)
        self.mask = torch.ones(n, LENGTH, dtype=torch.long)
        self.mask[:, LENGTH - 4 :] = torch.randint(0, 2, (n, 4), generator=g).cummin(1).values  # right padding
        self.ids[self.mask == 0] = 0  # the pad token
        self.labels = (self.ids == MARKER).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class TinyBert(L.LightningModule):
    """``BertForSequenceClassification`` with one small layer; its output's ``loss`` is the training loss."""

    def __init__(self, lr: float = 2e-3) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=LENGTH,
            num_labels=2,
        )
        self.model = BertForSequenceClassification(config)
        self.lr = lr

    def forward(self, **batch: Tensor):  # noqa: ANN201 - a ModelOutput
        return self.model(**batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self(**batch).loss
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("val/loss", self(**batch).loss)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def main(epochs: int = 6, out: str = "gensens_output/transformer_text") -> list[dict]:
    L.seed_everything(0, verbose=False)
    train = DataLoader(MarkerTokens(384, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(MarkerTokens(256, seed=1), batch_size=64)
    model = TinyBert()
    monitor = GeneralizationMonitor()  # every measure defined for the model, no options
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[monitor],
        logger=CSVLogger(out, name="", version=""),  # metrics.csv, gensens_mae.csv and the figure in `out`
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, train, val)  # prints the MAE table at the end
    ran = [m.name for m in monitor.active_measures]
    print(f"measures that ran: {', '.join(ran)}")
    print(f"measures skipped:  {', '.join(m.name for m in monitor.measures if m.name not in ran)}")
    print(f"metrics.csv, gensens_mae.csv and gensens_predicted_vs_actual.png written to {trainer.log_dir}")
    return monitor.mae_table


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny tensors: on a few shared cores more threads mostly spin (up to 20x slower)
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="gensens_output/transformer_text")
    args = parser.parse_args()
    main(args.epochs, args.out)
