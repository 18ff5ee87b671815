"""``mmdiag explain``: Grad-CAM / Grad-CAM++ overlays, Integrated Gradients panels, t-SNE plots, EI's [INT] maps and layer listings for a run.

Everything is written into ``RUN/explain/`` (or ``--output``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The run's predictor, a loader over ``args.split`` and the device."""
    import torch

    from mmdiag.evaluation.infer import Predictor
    from mmdiag.evaluation.robustness import load_run_data

    predictor = Predictor(args.run)
    loader, _ = load_run_data(predictor, args.run, args.split)
    return predictor, loader, "cuda" if torch.cuda.is_available() else "cpu"


def _to(batch: dict[str, Any], device: str, rows: list[int] | None = None) -> dict[str, Any]:
    """A batch on ``device``, restricted to ``rows`` if given."""
    import torch

    keep = torch.arange(len(batch["case_id"])) if rows is None else torch.tensor(rows)
    return {**batch, "case_id": [batch["case_id"][i] for i in keep.tolist()],
            "inputs": {k: v[keep].to(device) for k, v in batch["inputs"].items()},
            "present": {k: v[keep].to(device) for k, v in batch["present"].items()}}


def _gradcam(args: argparse.Namespace) -> int:
    import torch

    from mmdiag.errors import ConfigError
    from mmdiag.evaluation.plots import safe_name
    from mmdiag.evaluation.scores import probabilities
    from mmdiag.explain.gradcam import GradCAM, save_gradcam_panel

    predictor, loader, device = _load(args)
    spec, model = predictor.spec, predictor.model.eval().to(device)
    transform = predictor.transform.to(device)
    task = args.task or spec.main_task
    if task not in spec.tasks:
        raise ConfigError(f"--task {task!r}: the run has tasks {list(spec.tasks)}")
    classes = list(spec.tasks[task].classes)
    if args.target is not None and args.target not in classes:
        raise ConfigError(f"--target {args.target!r}: task {task!r} has classes {classes}")
    target = None if args.target is None else classes.index(args.target)
    cam = GradCAM(model, args.layer, modality=args.modality, method=args.method, layout=args.layout)
    out_dir = Path(args.output or Path(args.run) / "explain")
    wanted = set(args.case or [])
    done = 0
    for batch in loader:
        modality = cam.resolve_modality(batch["inputs"])
        rows = [i for i, cid in enumerate(batch["case_id"])
                if bool(batch["present"][modality][i]) and (not wanted or cid in wanted)]
        rows = rows[: max(0, args.cases - done)] if not wanted else rows
        if not rows:
            continue
        sub = _to(batch, device, rows)
        ready = transform(sub, train=False)
        res = cam(ready["inputs"], ready["present"], target=target, task=task)
        with torch.no_grad():
            prob = probabilities(spec, model(ready["inputs"], ready["present"]))[task]
        for j, cid in enumerate(sub["case_id"]):
            k = int(res.targets[j])
            name = f"{args.method}_{modality}_{cid}_{task}-{classes[k]}"
            path = out_dir / f"{safe_name(name)}.png"
            title = (f"{predictor.cfg.model.name}, {args.split} case {cid} | {modality} | task {task}: {classes[k]} "
                     f"(p = {float(prob[j, k]):.3f})\n{'Grad-CAM++' if args.method == 'gradcampp' else 'Grad-CAM'} "
                     f"at {res.layer}")
            save_gradcam_panel(path, sub["inputs"][modality][j], res.maps[j], title, alpha=args.alpha)
            print(f"{cid}: {classes[k]} (p = {float(prob[j, k]):.3f}) -> {path}")
        done += len(rows)
        if not wanted and done >= args.cases:
            break
    if not done:
        raise ConfigError(f"no case of split {args.split!r} to explain" +
                          (f" among --case {sorted(wanted)}" if wanted else " with the modality present"))
    print(f"layer {res.layer} ({res.layout}), {args.method}, {done} case(s) in {out_dir}")
    return 0


def _ig(args: argparse.Namespace) -> int:
    from mmdiag.errors import ConfigError
    from mmdiag.evaluation.plots import safe_name
    from mmdiag.explain.integrated_gradients import integrated_gradients, save_ig_panel

    predictor, loader, device = _load(args)
    spec, model = predictor.spec, predictor.model.eval().to(device)
    task = args.task or spec.main_task
    prefixed = [t for t in spec.tasks if t.startswith(task)]
    task = task if task in spec.tasks else prefixed[0] if len(prefixed) == 1 else task
    if task not in spec.tasks:
        raise ConfigError(f"--task {task!r}: the run has tasks {list(spec.tasks)}")
    classes = list(spec.tasks[task].classes)
    images = [m for m in spec.of_kind("image") if m in getattr(model, "modalities", spec.modalities)]
    mods = args.modality or images
    bad = [m for m in mods if m not in images]
    if bad:
        raise ConfigError(f"--modality {bad}: the model's image modalities are {images}")
    out_dir, done = Path(args.output or Path(args.run) / "explain"), 0
    for batch in loader:
        sub = _to(batch, device, list(range(min(len(batch["case_id"]), args.cases - done))))
        for m in mods:
            res = integrated_gradients(model, sub["inputs"], sub["present"], m, task, baseline=args.baseline,
                                       steps=args.steps, normalize=predictor.transform.normalize)
            for j, cid in enumerate(sub["case_id"]):
                k = int(res.targets[j])
                title = (f"{predictor.cfg.model.name}, {args.split} case {cid} | {m} | task {task}: {classes[k]} "
                         f"(p = {float(res.probs[j]):.3f}) | IG, {args.baseline} baseline, {args.steps} steps")
                path = save_ig_panel(out_dir / f"ig_{safe_name(m)}_{safe_name(cid)}.png", sub["inputs"][m][j],
                                     res.attributions[j], title)
                print(f"{title} -> {path}")
        done += len(sub["case_id"])
        if done >= args.cases:
            break
    return 0


def _tsne(args: argparse.Namespace) -> int:
    from mmdiag.explain.tsne import extract_features, write_tsne

    predictor, loader, device = _load(args)
    features, labels, ids = extract_features(predictor.model, loader, predictor.transform, device)
    paths = write_tsne(predictor.spec, features, labels, ids, Path(args.output or Path(args.run) / "explain"),
                       prefix=f"tsne_{args.split}", perplexity=args.perplexity, seed=args.seed, tasks=args.task,
                       heading=f"{predictor.cfg.model.name}, {args.split}")
    print(f"{len(ids)} cases, {features.shape[1]} features")
    for p in paths:
        print(p)
    return 0


def _layers(args: argparse.Namespace) -> int:
    from mmdiag.explain.gradcam import spatial_layers

    predictor, loader, device = _load(args)
    batch = _to(next(iter(loader)), device)
    ready = predictor.transform.to(device)(batch, train=False)
    for info in spatial_layers(predictor.model.to(device), ready["inputs"], ready["present"], args.modality):
        print(f"{info.name:48s} {info.type:16s} {str(info.shape[1:]):20s} {info.layout or 'ambiguous: --layout'}")
    return 0


def _int_maps(args: argparse.Namespace) -> int:
    from mmdiag.explain.int_maps import int_maps_for_run

    written = int_maps_for_run(args.run, args.output, args.split, args.cases)
    print(f"wrote {len(written)} [INT] maps to {written[0].parent if written else args.output}")
    return 0


def _permutation(args: argparse.Namespace) -> int:
    from mmdiag.explain.permutation import permutation_for_run

    for path in permutation_for_run(args.run, args.output, args.split, args.task, args.record, args.repeats,
                                    args.seed):
        print(path)
    return 0


def _window_attention(args: argparse.Namespace) -> int:
    from mmdiag.explain.window_attention import window_attention_for_run

    written = window_attention_for_run(args.run, args.output, args.split, args.cases)
    print(f"wrote {len(written)} window-attention panel(s) to {written[0].parent if written else args.output}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` verb with its ``gradcam``, ``tsne``, ``int-maps`` and ``layers`` commands."""
    p = subparsers.add_parser("explain", help="Grad-CAM overlays, t-SNE plots and layer listings of a finished run")
    sub = p.add_subparsers(dest="explain_verb", required=True)

    g = sub.add_parser("gradcam", help="Grad-CAM / Grad-CAM++ heatmaps over the input images (PNG)")
    g.add_argument("--run", required=True, help="run folder")
    g.add_argument("--layer", help="layer name (`mmdiag explain layers`); default: the layer the model names for "
                                   "the modality (its explain_layers)")
    g.add_argument("--modality", help="explained input of a multimodal model (default: the only image/volume input "
                                      "the model reads)")
    g.add_argument("--cases", type=int, default=8, help="explain the first N cases of the split (default 8)")
    g.add_argument("--case", action="append", metavar="ID", help="explain these case ids instead")
    g.add_argument("--method", default="gradcam", choices=["gradcam", "gradcampp"])
    g.add_argument("--layout", default="auto", choices=["auto", "channels_first", "channels_last", "tokens"],
                   help="the layer's output layout (auto: declared by the model or the layer, else from the shape)")
    g.add_argument("--split", default="test", choices=["train", "val", "test"])
    g.add_argument("--task", help="task whose logit is explained (default: the main task)")
    g.add_argument("--target", help="class to explain (default: the predicted class)")
    g.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    g.add_argument("--output", help="output folder (default: RUN/explain)")
    g.set_defaults(fn=_gradcam)

    ig = sub.add_parser("ig", help="Integrated Gradients per image modality, others held at their inputs (PNG "
                                   "panels image | attribution | overlay)")
    ig.add_argument("--run", required=True, help="run folder")
    ig.add_argument("--task", help="task (or a unique prefix, e.g. diag) whose predicted class is explained "
                                   "(default: the main task)")
    ig.add_argument("--modality", action="append", help="explained modality (default: every image modality)")
    ig.add_argument("--baseline", default="black", choices=["black", "blur"])
    ig.add_argument("--steps", type=int, default=32, help="integration steps")
    ig.add_argument("--cases", type=int, default=4, help="first N cases of the split")
    ig.add_argument("--split", default="test", choices=["train", "val", "test"])
    ig.add_argument("--output", help="output folder (default: RUN/explain)")
    ig.set_defaults(fn=_ig)

    t = sub.add_parser("tsne", help="t-SNE of the model's features (forward_features), coloured by class (PNG + CSV)")
    t.add_argument("--run", required=True, help="run folder")
    t.add_argument("--split", default="test", choices=["train", "val", "test"])
    t.add_argument("--task", action="append", help="colour by this task (default: every task)")
    t.add_argument("--perplexity", type=float, default=30.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--output", help="output folder (default: RUN/explain)")
    t.set_defaults(fn=_tsne)

    im = sub.add_parser("int-maps", help="EI: patch similarity to [CLS] with and without [INT] tokens (PNG)")
    im.add_argument("--run", required=True, help="EI run folder (for ei_two_stage: its stage2_ei folder)")
    im.add_argument("--split", default="test", choices=["train", "val", "test"])
    im.add_argument("--cases", type=int, default=8, help="first N cases of the split")
    im.add_argument("--output", help="output folder (default: RUN/explain)")
    im.set_defaults(fn=_int_maps)

    pm = sub.add_parser("permutation", help="record-field permutation importance per class (CSV + PNG heat map)")
    pm.add_argument("--run", required=True, help="run folder (a model reading a record modality)")
    pm.add_argument("--split", default="test", choices=["train", "val", "test"])
    pm.add_argument("--task", help="single-label task (default: the main task)")
    pm.add_argument("--record", help="tabular modality (default: the only one)")
    pm.add_argument("--repeats", type=int, default=5, help="shuffles per field")
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument("--output", help="output folder (default: RUN/explain)")
    pm.set_defaults(fn=_permutation)

    wa = sub.add_parser("window-attention", help="RemixFormer++: region-encoder attention over the dermoscopy "
                                                 "windows (PNG)")
    wa.add_argument("--run", required=True, help="run folder (remixformer_pp with D, or remixformer_d)")
    wa.add_argument("--split", default="test", choices=["train", "val", "test"])
    wa.add_argument("--cases", type=int, default=8, help="first N cases of the split")
    wa.add_argument("--output", help="output folder (default: RUN/explain)")
    wa.set_defaults(fn=_window_attention)

    la = sub.add_parser("layers", help="layers with spatial outputs (names for --layer), with shapes and layouts")
    la.add_argument("--run", required=True, help="run folder")
    la.add_argument("--modality", help="input whose feature maps to list (default: the only image/volume input the "
                                       "model reads)")
    la.add_argument("--split", default="test", choices=["train", "val", "test"])
    la.set_defaults(fn=_layers)
