"""Rank-correlation analysis of generalization measures over a family of trained models (Jiang et al., ICLR 2020):
:func:`evaluate` on finished runs, :func:`train_family` to train a small family."""

from lightning_gensens.sweep.evaluation import MIN_RUNS, Run, SweepRow, evaluate, format_table, granulated_kendall
from lightning_gensens.sweep.family import add_arguments, run, train_family

__all__ = [
    "MIN_RUNS",
    "Run",
    "SweepRow",
    "add_arguments",
    "evaluate",
    "format_table",
    "granulated_kendall",
    "run",
    "train_family",
]
