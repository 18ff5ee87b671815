"""``mmdiag robustness``: re-evaluate a finished run under graded image corruptions (MedMamba Sec. 5.3)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _options(items: list[str] | None) -> dict:
    import yaml

    from mmdiag.errors import ConfigError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--option {item!r} is not KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _robustness(args: argparse.Namespace) -> int:
    from mmdiag.evaluation.report import fmt
    from mmdiag.evaluation.robustness import run_robustness

    result = run_robustness(args.run, weights=args.weights, data=args.data, root=args.root, options=_options(args.option),
                            split=args.split, output=args.output, corruptions=args.corruptions,
                            modalities=args.modalities, seed=args.seed, batch_size=args.batch_size)
    print(f"data: {result['data']}")
    for task, clean in result["clean"]["tasks"].items():
        print(f"{task}: clean OA {fmt(clean['acc'])}, AUC {fmt(clean['auc'])}; OA at severities 0-5:")
        for name, rows in result["results"].items():
            print(f"  {name:18s} " + " ".join(fmt(r["tasks"][task]["acc"], 3) for r in rows))
    print(f"report: {result['files'][1]}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``robustness`` verb."""
    p = subparsers.add_parser(
        "robustness", help="re-evaluate a finished run under graded image corruptions (5 severities each)",
        description="Corrupt the image modalities of the test split (rotation, translation, colour temperature, "
                    "Gaussian noise and blur, brightness, contrast; severities 1-5, see "
                    "mmdiag.evaluation.robustness) and report OA, AUC, precision, sensitivity, specificity and F1.")
    p.add_argument("--run", required=True, metavar="RUN", help="folder of a finished run")
    p.add_argument("--weights", metavar="FILE", help="a weights file (.safetensors) to evaluate instead of "
                                                     "RUN/model.safetensors")
    p.add_argument("--data", help="evaluate on this dataset instead of the run's split: a registered name or a "
                                  "dataset.yaml with the run's modalities and tasks (all its cases are used)")
    p.add_argument("--root", help="folder of the --data dataset (registered datasets)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="adapter option of the --data dataset")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="the run's split (no --data)")
    p.add_argument("--output", help="output folder (default: RUN/robustness)")
    p.add_argument("--corruptions", nargs="+", metavar="NAME", help="subset of the corruptions (default: all)")
    p.add_argument("--modalities", nargs="+", metavar="NAME", help="image modalities to corrupt (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Gaussian noise")
    p.add_argument("--batch-size", type=int, help="evaluation batch size (default: the run's)")
    p.set_defaults(fn=_robustness)
