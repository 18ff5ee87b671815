"""``mmdiag`` command line: one thin function per verb; the work lives in the library."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import logging
import sys
from pathlib import Path

from mmdiag.errors import MmdiagError

__all__ = ["main", "build_parser", "VERB_MODULES"]

# Further verbs live in their own modules, each with ``register(subparsers)`` adding its parser (fn=...).
VERB_MODULES: list[str] = ["mmdiag.cli.medmnist", "mmdiag.cli.explain", "mmdiag.cli.robustness", "mmdiag.cli.pretrain",
                          "mmdiag.cli.serve"]


def _train(args: argparse.Namespace) -> int:
    from mmdiag.config import load_config
    from mmdiag.training.recipes import run_experiment

    cfg = load_config(args.config, args.overrides)
    result = run_experiment(cfg, args.output, resume=args.resume)
    if result.metrics:
        _print_metrics(result.metrics)
        print(f"report: {result.run_dir / 'report.md'}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.without:
        return _ablate(args)
    from mmdiag.training.run import eval_dir_for, evaluate_run

    _print_metrics(evaluate_run(args.run, args.split))
    print(f"report: {eval_dir_for(args.run, args.split) / 'report.md'}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from mmdiag.evaluation.ablation import modality_ablation

    table = modality_ablation(args.run, args.split, args.without)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"modality ablation: {Path(args.run) / 'eval' / args.split / 'modality_ablation.md'}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mmdiag.evaluation.infer import predict_cases

    out = predict_cases(args.run, manifest=args.manifest, case=args.input, output=args.output)
    print(out if isinstance(out, str) else json.dumps(out, indent=2))
    return 0


def _cv(args: argparse.Namespace) -> int:
    from mmdiag.config import load_config
    from mmdiag.training.cv import compare_cv, run_cv
    from mmdiag.training.run import run_dir_for

    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.output) if args.output else run_dir_for(cfg)
    result = run_cv(cfg, out_dir, args.folds)
    for key, s in result["summary"].items():
        if key.startswith("mean/"):
            print(f"{key:24s} {s['mean']:.4f} ± {s['std']:.4f}")
    if args.against:
        for key, t in compare_cv(out_dir, args.against).items():
            print(f"paired t-test {key}: {t['mean_a']:.4f} vs {t['mean_b']:.4f}, t = {t['t']:.3f}, p = {t['p']:.4f}")
    print(f"report: {out_dir / 'cv_report.md'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mmdiag.training.demo import run_demo

    run_demo(args.output, epochs=args.epochs, n_cases=args.n_cases)
    return 0


def _models(args: argparse.Namespace) -> int:
    import inspect

    from mmdiag.models import list_models
    from mmdiag.registry import MODELS, RECIPES

    if args.recipes:
        from mmdiag.training.recipes import _register_all

        _register_all()
        table, names = RECIPES, RECIPES.names(args.pattern)
    elif args.peft:
        from mmdiag.models.peft import PEFT_METHODS

        table, names = PEFT_METHODS, PEFT_METHODS.names(args.pattern)
    else:
        table, names = MODELS, list_models(args.pattern, include_hidden=args.all)
    for name in names:
        doc = (inspect.getdoc(table.get(name)) or "").splitlines()
        print(f"{name:24s} {doc[0] if doc else ''}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from mmdiag.data.sources import list_datasets

    for name, doc in list_datasets():
        print(f"{name:24s} {doc}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from mmdiag.config.load import resolve_config_path, shipped_configs

    names = shipped_configs()
    width = max(map(len, names))
    for name in names:
        print(f"{name:{width}s}  {_config_summary(resolve_config_path(name).read_text())}")
    return 0


def _config_summary(text: str) -> str:
    """The first sentence of a config's leading comment block (which may wrap over several lines), never cut."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    words = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(lines))  # a word hyphenated across lines
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s+(?=[A-Z(`])", words)
    return words if end is None else words[:end.start() + 1]


def _summary(args: argparse.Namespace) -> int:
    from mmdiag.evaluation.report import fmt
    from mmdiag.evaluation.stats import summarize_runs

    rows, mean = summarize_runs(args.runs, args.metrics)
    print("| run | dataset | " + " | ".join(args.metrics) + " |")
    print("|---|---|" + "---|" * len(args.metrics))
    for r in rows:
        print(f"| {r['run']} | {r['dataset']} | " + " | ".join(fmt(r[m]) for m in args.metrics) + " |")
    print("| **MEAN** | | " + " | ".join(fmt(mean[m]) for m in args.metrics) + " |")
    return 0


def _print_metrics(metrics: dict) -> None:
    from mmdiag.evaluation.report import fmt

    for task, m in metrics["tasks"].items():
        print(f"{task}: " + ", ".join(f"{k} {fmt(m[k])}" for k in ("acc", "balanced_acc", "auc", "f1", "map")))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmdiag", description="Multimodal medical-image disease classification.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train one experiment, then report on its test split")
    t.add_argument("--config", help="experiment YAML or shipped config name (`mmdiag configs`); default: built-in")
    t.add_argument("--output", help="run folder (default: output_dir/name)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 data.batch_size=64")
    t.set_defaults(fn=_train)

    e = sub.add_parser("eval", help="evaluate a finished run's best model on a split; writes RUN/eval/<split>/ "
                                    "(report.md, metrics.json, predictions.csv, plots/), the training report stays")
    e.add_argument("--run", required=True, help="run folder")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (default: "
                                                                                      "test)")
    e.add_argument("--without", action="append", metavar="MODALITY",
                   help="instead, evaluate with this modality removed at test time (repeatable; 'all': each one in "
                        "turn) and write RUN/eval/SPLIT/modality_ablation.md; the report is left as it is")
    e.set_defaults(fn=_eval)

    pr = sub.add_parser("predict", help="probabilities for one case or a manifest, from a finished run")
    pr.add_argument("--run", required=True, help="run folder")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="the cases to predict: a CSV manifest (file paths relative to its folder) or "
                                        "a dataset.yaml (its manifest and root); label columns may be empty or absent")
    src.add_argument("--input", action="append", metavar="MODALITY=PATH|FIELD=VALUE",
                     help="one case: an image/volume path per modality, record fields as modality.field=value")
    pr.add_argument("--output", help="CSV to write (manifest mode; default: RUN/predictions_<manifest name>.csv)")
    pr.set_defaults(fn=_predict)

    c = sub.add_parser("cv", help="k-fold cross-validation (patient-grouped), mean ± std over folds")
    c.add_argument("--config")
    c.add_argument("--output", help="folder of the fold runs")
    c.add_argument("--folds", type=int, help="k (default: data.split.folds)")
    c.add_argument("--against", help="another cv folder: paired t-tests of the fold scores")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=_cv)

    d = sub.add_parser("demo", help="baselines vs fusion on the built-in synthetic data, with a comparison table")
    d.add_argument("--output", default="runs/demo")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--n-cases", type=int, default=800)
    d.set_defaults(fn=_demo)

    m = sub.add_parser("models", help="list registered models")
    m.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'medmamba*'")
    m.add_argument("--all", action="store_true", help="include hidden tiny_* test variants")
    m.add_argument("--peft", action="store_true", help="list the parameter-efficient fine-tuning methods instead")
    m.add_argument("--recipes", action="store_true", help="list the multi-stage training recipes instead")
    m.set_defaults(fn=_models)

    ds = sub.add_parser("datasets", help="list registered datasets")
    ds.set_defaults(fn=_datasets)
    su = sub.add_parser("summary", help="mean-over-tasks metrics of several runs (e.g. one per dataset) and their MEAN")
    su.add_argument("runs", nargs="+", help="run folders (a recipe's folder: its final stage is used)")
    su.add_argument("--metrics", nargs="+", default=["map", "auc", "s2", "acc"], help="keys of the runs' metrics.json "
                    "'mean' (default: map auc s2 acc)")
    su.set_defaults(fn=_summary)
    cf = sub.add_parser("configs", help="list the experiment configs shipped with mmdiag (usable as --config NAME)")
    cf.set_defaults(fn=_configs)
    for module in VERB_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # key=value overrides may stand between the options
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    if len(overrides) != len(extra) or (overrides and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # Lightning prints its lines through its own handler already
        handler.addFilter(lambda record: not record.name.startswith("lightning."))
    try:
        return args.fn(args)
    except MmdiagError as e:
        print(f"mmdiag {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
