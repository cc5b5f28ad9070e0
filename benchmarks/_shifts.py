"""Shifted pools for benchmarks/prediction.py: MNIST-1D regenerated with other generator parameters, class-imbalanced
draws from the test split, corruptions of the z-scored digits, and two held-out families of shifts of both. Each pool
is named ``<kind>-<level>``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LEVELS = (1, 2, 3)
NATURAL = {  # MNIST-1D generator parameter: its value at levels 1, 2, 3 (defaults in the comments)
    "iid_noise_scale": (0.05, 0.1, 0.2),  # 0.02
    "corr_noise_scale": (0.4, 0.7, 1.2),  # 0.25
    "shear_scale": (1.25, 2.0, 3.0),  # 0.75
    "max_translation": (60, 66, 72),  # 48; of a 72-sample padded signal
    "scale_coeff": (0.8, 1.2, 1.6),  # 0.4
}
LABEL = {  # class proportions at levels 1, 2, 3
    "dirichlet": (3.0, 1.0, 0.3),  # concentration α of a symmetric Dirichlet
    "classes": (5, 3, 2),  # k random classes kept, uniform among them
    "dominant": (0.3, 0.5, 0.8),  # one random class's share, the rest uniform
}
CORRUPTION = {  # applied to the z-scored 8×8 digits
    "noise": (0.4, 0.75, 1.2),  # gaussian σ
    "blur": (1, 2, 3),  # passes of a 3×3 binomial kernel, edges repeated
    "translate": (0.25, 0.5, 1.0),  # sub-pixel shift: this share of a ±1-pixel roll along a random axis
    "contrast": (0.7, 0.4, 0.2),  # each image pulled to this share around its own mean
    "occlude": (3, 4, 5),  # side of a random square set to 0 (the training mean)
}
HELD_OUT = {  # one severity each; "+dirichlet": the shift applied to a class-imbalanced draw (Dirichlet α = 1)
    "mnist1d": {
        "noise+shear": {"iid_noise_scale": 0.1, "shear_scale": 1.5},
        "corr+translate": {"corr_noise_scale": 0.5, "max_translation": 60},
        "scale+shear": {"scale_coeff": 1.0, "shear_scale": 1.25},
        "corr+noise": {"corr_noise_scale": 0.35, "iid_noise_scale": 0.07},
        "translate+scale": {"max_translation": 56, "scale_coeff": 0.9},
        "shear+dirichlet": {"shear_scale": 1.5},
    },
    "digits": {
        "salt_pepper": "8% of pixels set to 2, 8% to −1.5",
        "pixelate": "2×2 blocks averaged",
        "brightness": "+0.6",
        "rotate": "a uniform angle in ±20°, edges repeated",
        "noise+dirichlet": "gaussian σ 0.6",
    },
}
"""Shifts designed after the shift test's covariate estimate was chosen on the other families, to check it on
shifts it was not chosen on."""
UNSEEN = {  # one severity each; "+dominant" / "+classes": the shift applied to a class-imbalanced draw
    "mnist1d": {
        "noise+scale+translate": {"iid_noise_scale": 0.08, "scale_coeff": 1.0, "max_translation": 58},
        "corr+shear+scale": {"corr_noise_scale": 0.5, "shear_scale": 1.75, "scale_coeff": 0.7},
        "shear+translate": {"shear_scale": 2.5, "max_translation": 64},
        "mild_noise+corr": {"iid_noise_scale": 0.04, "corr_noise_scale": 0.3},
        "translate+noise": {"max_translation": 68, "iid_noise_scale": 0.15},
        "scale+dominant": {"scale_coeff": 1.4},
    },
    "digits": {
        "erase_rows": "two random rows set to 0",
        "speckle": "x·(1 + 0.5ε)",
        "affine": "a random scale in 0.85–1.15 and shear in ±0.2, edges repeated",
        "blur+noise": "one blur pass, then gaussian σ 0.5",
        "contrast+brightness": "pulled to 60% around each image's mean, then +0.4",
        "rotate+classes": "a uniform angle in ±12°, on a draw of 5 random classes",
    },
}
"""Shifts designed after the covariate estimate took the nearest-neighbour distance and the rescaled logits (chosen
on the four families above), run once and reported as they came."""
FAMILIES = {"natural": NATURAL, "label": LABEL, "corruption": CORRUPTION, "held_out": HELD_OUT, "unseen": UNSEEN}
CONTROL = "fresh"
"""MNIST-1D drawn anew with the default parameters: no shift, the control."""


@dataclass(frozen=True)
class Pool:
    family: str  # "natural", "label", "corruption" or "control"
    kind: str
    level: int  # 0 for the control
    x: Tensor
    y: Tensor

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.level}"


def _mnist1d(seed: int, samples: int, **changes: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw MNIST-1D signals and labels from the generator with ``changes`` to its default arguments."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples, args.train_split = seed, samples, 0.0  # all samples in the test split
    for key, value in changes.items():
        setattr(args, key, value)
    state = np.random.get_state()  # make_dataset seeds NumPy's global RNG
    data = make_dataset(args)
    np.random.set_state(state)
    return data["x_test"], data["y_test"]


class NaturalShifts:
    """MNIST-1D regenerated with other generator parameters, z-scored with the training split's statistics as
    :func:`lightning_gensens.data.load_arrays` does for the test split."""

    def __init__(self) -> None:
        from mnist1d.data import get_dataset_args, make_dataset

        state = np.random.get_state()
        args = get_dataset_args()
        x_train = make_dataset(args)["x"]
        np.random.set_state(state)
        self.mean, self.std = x_train.mean(axis=0), x_train.std(axis=0)
        self.std[self.std == 0] = 1.0

    def pools(self, seed: int, samples: int) -> list[Pool]:
        """The control and every parameter at every level, ``samples`` each, drawn with generator seed 1000 + seed
        (the training data use 42)."""
        made = [(CONTROL, 0, {})] + [(k, lv, {k: v[lv - 1]}) for k, v in NATURAL.items() for lv in LEVELS]
        out = []
        for kind, level, changes in made:
            family = "control" if kind == CONTROL else "natural"
            out.append(Pool(family, kind, level, *self._drawn(1000 + seed, samples, changes)))
        return out

    def held_out(self, seed: int, samples: int) -> list[Pool]:
        """:data:`HELD_OUT`'s MNIST-1D pools, ``samples`` each, generator seed 2000 + seed."""
        rng, out = np.random.default_rng(30_000 + seed), []
        for kind, changes in HELD_OUT["mnist1d"].items():
            z, labels = self._drawn(2000 + seed, samples, changes)
            if kind.endswith("+dirichlet"):
                z, labels = _with_proportions(z, labels, rng.dirichlet(np.ones(10)), rng)
            out.append(Pool("held_out", kind, 1, z, labels))
        return out

    def unseen(self, seed: int, samples: int) -> list[Pool]:
        """:data:`UNSEEN`'s MNIST-1D pools, ``samples`` each, generator seed 3000 + seed."""
        rng, out = np.random.default_rng(40_000 + seed), []
        for kind, changes in UNSEEN["mnist1d"].items():
            z, labels = self._drawn(3000 + seed, samples, changes)
            if kind.endswith("+dominant"):
                q = np.full(10, 0.5 / 9)
                q[rng.integers(10)] = 0.5
                z, labels = _with_proportions(z, labels, q, rng)
            out.append(Pool("unseen", kind, 1, z, labels))
        return out

    def _drawn(self, seed: int, samples: int, changes: dict[str, float]) -> tuple[Tensor, Tensor]:
        """``samples`` z-scored signals and their labels from the generator with ``changes``."""
        x, y = _mnist1d(seed, samples, **changes)
        return torch.tensor((x - self.mean) / self.std, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def _with_proportions(x: Tensor, y: Tensor, q: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """As many draws as ``y``, with replacement: each sample's class from the proportions ``q``, then the sample
    uniformly among those of that class."""
    by_class = [np.flatnonzero(y.numpy() == k) for k in range(len(q))]
    picks = torch.tensor([rng.choice(by_class[k]) for k in rng.choice(len(q), len(y), p=q)])
    return x[picks], y[picks]


def label_shifts(x: Tensor, y: Tensor, num_classes: int, seed: int) -> list[Pool]:
    """Class-imbalanced pools as large as the test split ``(x, y)``: each sample's class drawn from the pool's
    proportions, then the sample uniformly (with replacement) among the test samples of that class."""
    rng = np.random.default_rng(20_000 + seed)
    out = []
    for kind, levels in LABEL.items():
        for level, value in zip(LEVELS, levels, strict=True):
            order = rng.permutation(num_classes)
            if kind == "dirichlet":
                q = rng.dirichlet(np.full(num_classes, value))
            elif kind == "classes":
                q = np.zeros(num_classes)
                q[order[: int(value)]] = 1.0 / int(value)
            else:
                q = np.full(num_classes, (1.0 - value) / (num_classes - 1))
                q[order[0]] = value
            out.append(Pool("label", kind, level, *_with_proportions(x, y, q, rng)))
    return out


def _blurred(img: Tensor, passes: int) -> Tensor:
    """Images [N, 1, 8, 8] after ``passes`` of a 3×3 binomial kernel, edges repeated."""
    kernel = (torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16).view(1, 1, 3, 3)
    for _ in range(passes):
        img = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), kernel)
    return img


def _resampled(img: Tensor, theta: Tensor) -> Tensor:
    """Images [N, 1, 8, 8] under the affine maps ``theta`` [N, 2, 3], bilinear, edges repeated."""
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, padding_mode="border", align_corners=False)


def corruptions(x: Tensor, y: Tensor, seed: int) -> list[Pool]:
    """Every corruption of :data:`CORRUPTION` at every level, of the z-scored 8×8 digits ``x`` (N × 64).
    Corrupting the network's (z-scored) input rather than the raw pixels keeps the severities comparable: a raw
    corruption of digits' near-constant border pixels is blown up 10–100× by the z-scoring."""
    g = torch.Generator().manual_seed(10_000 + seed)
    n = x.shape[0]
    img = x.view(n, 1, 8, 8)
    mean = x.mean(dim=1, keepdim=True)
    out = []
    for level in LEVELS:
        noise, passes, step, share, side = (v[level - 1] for v in CORRUPTION.values())
        blurred = _blurred(img, passes)
        sign = 2 * torch.randint(0, 2, (n,), generator=g) - 1
        axis = (torch.rand(n, generator=g) < 0.5).long()
        rolled = [torch.roll(im, int(s), dims=int(a)) for im, s, a in zip(img[:, 0], sign, axis, strict=True)]
        occluded = x.clone().view(n, 8, 8)
        for i, (r, c) in enumerate(zip(*torch.randint(0, 8 - side + 1, (2, n), generator=g).tolist(), strict=True)):
            occluded[i, r : r + side, c : c + side] = 0.0
        shifted = {
            "noise": x + noise * torch.randn(x.shape, generator=g),
            "blur": blurred.reshape(n, -1),
            "translate": (1 - step) * x + step * torch.stack(rolled).reshape(n, -1),
            "contrast": mean + share * (x - mean),
            "occlude": occluded.reshape(n, -1),
        }
        out += [Pool("corruption", kind, level, z, y) for kind, z in shifted.items()]
    return out


def held_out_corruptions(x: Tensor, y: Tensor, seed: int) -> list[Pool]:
    """:data:`HELD_OUT`'s digits pools, of the z-scored 8×8 digits ``x`` (N × 64)."""
    g, rng = torch.Generator().manual_seed(50_000 + seed), np.random.default_rng(30_000 + seed)
    n = x.shape[0]
    img = x.view(n, 1, 8, 8)
    u = torch.rand(x.shape, generator=g)
    salted = torch.where(u < 0.08, 2.0, torch.where(u < 0.16, -1.5, x))
    angle = (2 * torch.rand(n, generator=g) - 1) * math.radians(20)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(n)
    rotation = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    noisy = _with_proportions(x + 0.6 * torch.randn(x.shape, generator=g), y, rng.dirichlet(np.ones(10)), rng)
    shifted = {
        "salt_pepper": (salted, y),
        "pixelate": (F.interpolate(F.avg_pool2d(img, 2), scale_factor=2.0, mode="nearest").reshape(n, -1), y),
        "brightness": (x + 0.6, y),
        "rotate": (_resampled(img, rotation).reshape(n, -1), y),
        "noise+dirichlet": noisy,
    }
    return [Pool("held_out", kind, 1, z, labels) for kind, (z, labels) in shifted.items()]


def unseen_corruptions(x: Tensor, y: Tensor, seed: int) -> list[Pool]:
    """:data:`UNSEEN`'s digits pools, of the z-scored 8×8 digits ``x`` (N × 64)."""
    g, rng = torch.Generator().manual_seed(60_000 + seed), np.random.default_rng(40_000 + seed)
    n = x.shape[0]
    img = x.view(n, 1, 8, 8)
    erased = img.clone()
    for i, rows in enumerate(torch.rand(n, 8, generator=g).argsort(dim=1)[:, :2].tolist()):
        erased[i, 0, rows] = 0.0
    scale = 1 + (2 * torch.rand(n, generator=g) - 1) * 0.15
    shear, zero = (2 * torch.rand(n, generator=g) - 1) * 0.2, torch.zeros(n)
    affine = torch.stack([torch.stack([scale, shear, zero], 1), torch.stack([zero, scale, zero], 1)], 1)
    blurred = _blurred(img, 1).reshape(n, -1)
    mean = x.mean(dim=1, keepdim=True)
    angle = (2 * torch.rand(n, generator=g) - 1) * math.radians(12)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    rotated = _resampled(img, rotation)
    q = np.zeros(10)
    q[rng.permutation(10)[:5]] = 0.2
    warped = _resampled(img, affine)
    shifted = {
        "erase_rows": (erased.reshape(n, -1), y),
        "speckle": (x * (1 + 0.5 * torch.randn(x.shape, generator=g)), y),
        "affine": (warped.reshape(n, -1), y),
        "blur+noise": (blurred + 0.5 * torch.randn(x.shape, generator=g), y),
        "contrast+brightness": (mean + 0.6 * (x - mean) + 0.4, y),
        "rotate+classes": _with_proportions(rotated.reshape(n, -1), y, q, rng),
    }
    return [Pool("unseen", kind, 1, z, labels) for kind, (z, labels) in shifted.items()]
