"""Built-in datasets that need no download: scikit-learn's digits, MNIST-1D, and synthetic token data."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASETS = ("digits", "mnist1d")


def load_arrays(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test), features z-scored with training-split statistics."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args, make_dataset

        state = np.random.get_state()  # make_dataset seeds NumPy's global RNG
        data = make_dataset(get_dataset_args())
        np.random.set_state(state)
        x_tr, y_tr, x_te, y_te = data["x"], data["y"], data["x_test"], data["y_test"]
    else:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}.")
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0
    return (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te


class ArrayDataModule(L.LightningDataModule):
    """Train and validation loaders over one of :data:`DATASETS`; ``image=True`` keeps digits as 1×8×8."""

    def __init__(self, name: str = "digits", batch_size: int = 64, image: bool = False, seed: int = 0) -> None:
        super().__init__()
        x_tr, y_tr, x_te, y_te = load_arrays(name, seed)
        shape = (-1, 1, 8, 8) if image and name == "digits" else (-1, x_tr.shape[1])
        self.train_set = TensorDataset(
            torch.tensor(x_tr, dtype=torch.float32).reshape(shape), torch.tensor(y_tr, dtype=torch.long)
        )
        self.val_set = TensorDataset(
            torch.tensor(x_te, dtype=torch.float32).reshape(shape), torch.tensor(y_te, dtype=torch.long)
        )
        self.batch_size = batch_size
        self.num_features = x_tr.shape[1]
        self.num_classes = int(y_tr.max()) + 1

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


class TokenData(Dataset):
    """Synthetic token classification for tiny transformers (no download): random token ids, the last three positions
    randomly masked, and the label whether token 7 occurs."""

    def __init__(self, n: int = 96, length: int = 12, vocab: int = 50, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, vocab, (n, length), generator=g)
        self.mask = torch.ones(n, length, dtype=torch.long)
        self.mask[:, length - 3 :] = torch.randint(0, 2, (n, 3), generator=g)
        self.labels = (self.ids == 7).any(1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}
