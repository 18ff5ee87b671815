"""``mmdiag medmnist-eval``: the official MedMNIST ACC/AUC of a finished run, and its official result file."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _medmnist_eval(args: argparse.Namespace) -> int:
    from mmdiag.evaluation.protocols.medmnist import evaluate_medmnist_run

    metrics, path = evaluate_medmnist_run(args.run, args.split, args.output,
                                          "predictions" if args.from_predictions else "model", args.root, args.tag)
    print(f"{args.split}: ACC {metrics.ACC:.4f}  AUC {metrics.AUC:.4f}  (official MedMNIST evaluator)")
    print(f"result file: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``medmnist-eval`` verb."""
    p = subparsers.add_parser("medmnist-eval", help="official MedMNIST ACC/AUC of a run + the official result file")
    p.add_argument("--run", required=True, help="run folder of a data.dataset=medmnist run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--output", help="folder of the result file (default: the run folder)")
    p.add_argument("--root", help="folder of the .npz files, if not the run's data.root")
    p.add_argument("--tag", help="the @run part of the file name (default: the run folder's name)")
    p.add_argument("--from-predictions", action="store_true",
                   help="score the run's predictions.csv instead of running the model (it must hold the whole split)")
    p.set_defaults(fn=_medmnist_eval)
