"""Command line: ``python -m lightning_gensens demo|rank|sweep`` (and ``--help``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from lightning_gensens import demo, sweep

    parser = argparse.ArgumentParser(
        prog="python -m lightning_gensens",
        description="Predict test loss from sensitivity measures while a network trains.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="train the papers' 4x100 MLP with GeneralizationMonitor on an embedded dataset",
        description="Train the papers' MLP (4 hidden ReLU layers of 100, SGD lr 0.05, weight decay 5e-4, batch 64) "
        "with GeneralizationMonitor; print predicted versus actual test loss per epoch and the final MAE table; "
        "write CSV logs, the MAE table and a PNG plot to --out.",
    )
    demo.add_arguments(demo_parser)
    rank_parser = commands.add_parser(
        "rank",
        help="rank MLPs and small CNNs by output sensitivity before training (Forouzesh §5.4)",
        description="Order a family of MLP widths/depths and small CNNs by output sensitivity at initialisation "
        "(S_before), train each briefly, and print S_before beside the test loss reached and their Spearman "
        "rank correlation.",
    )
    demo.add_rank_arguments(rank_parser)
    sweep_parser = commands.add_parser(
        "sweep",
        help="train a family of MLPs and rank-correlate every measure with their generalization (Jiang et al. 2020)",
        description="Train a grid of MLPs (widths x depths x seeds) with GeneralizationMonitor and print, per "
        "measure, Kendall's tau with the generalization gap and the test loss, the granulated Kendall coefficient "
        "per hyperparameter axis and its mean Psi (Jiang et al., ICLR 2020), and the Pearson correlation of log "
        "measure with log test loss (Forouzesh et al., Fig. 1).",
    )
    sweep.add_arguments(sweep_parser)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo.run(args)
    elif args.command == "sweep":
        sweep.run(args)
    else:
        demo.run_rank(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
