"""Private noise generators of the Monte-Carlo metrics: seeded once per device, never re-seeded by ``reset``."""

from __future__ import annotations

import torch

from lightning_gensens.utilities import rank_generator


def device_generator(
    generators: dict[torch.device, torch.Generator], seed: int, device: torch.device
) -> torch.Generator:
    """The generator of ``device`` in ``generators``, created on first use and seeded with seed + 7919·rank.

    torchmetrics' ``forward`` calls ``reset()`` before every batch, so a generator re-seeded there would draw the
    same noise for every batch; kept here, ``forward`` and ``update`` draw the same stream.
    """
    generator = generators.get(device)
    if generator is None:
        generator = generators[device] = rank_generator(seed, device)
    return generator
