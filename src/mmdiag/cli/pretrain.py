"""``mmdiag pretrain dino``: self-supervised DINO pre-training of a window encoder (RemixFormer++'s T_φ1)."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def _json(option: str, text: str) -> dict:
    from mmdiag.errors import ConfigError

    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"pretrain dino: {option} {text!r} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"pretrain dino: {option} must be a JSON object, got {text!r}")
    return value


def _dino(args: argparse.Namespace) -> int:
    from mmdiag.errors import ConfigError
    from mmdiag.training.pretrain_dino import DINOConfig, dataset_images, folder_images, pretrain_dino

    if bool(args.images) == bool(args.dataset):
        raise ConfigError("pretrain dino: give either --images FOLDER or --dataset NAME --root ROOT")
    options = _json("--dataset-options", args.dataset_options)
    cfg = DINOConfig(
        model=args.model, model_options=_json("--model-options", args.model_options), window=args.window,
        resize=args.resize, native_fraction=args.native_fraction, global_size=args.global_size, local_size=args.local_size,
        n_local=args.local_crops, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        warmup_epochs=args.warmup_epochs, momentum_teacher=args.momentum_teacher, out_dim=args.out_dim,
        norm_last_layer=not args.no_norm_last_layer, teacher_temp=args.teacher_temp,
        warmup_teacher_temp=args.warmup_teacher_temp, warmup_teacher_temp_epochs=args.warmup_teacher_temp_epochs,
        num_workers=args.num_workers, accelerator=args.accelerator, precision=args.precision, seed=args.seed,
        max_steps=args.max_steps)
    if args.images:
        paths = folder_images(args.images)
    else:
        if not args.root:
            raise ConfigError("pretrain dino: --dataset needs --root (the dataset's folder)")
        paths = dataset_images(args.dataset, args.root, args.modality, options)
    result = pretrain_dino(paths, args.output, cfg)
    if result.losses:
        print(f"DINO: {len(result.losses)} steps, loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
    print(f"teacher backbone (use this as the window encoder): {result.teacher}")
    print(f"student backbone: {result.student}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` verb with its ``dino`` method."""
    p = subparsers.add_parser("pretrain", help="self-supervised pre-training of an encoder")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    d = methods.add_parser("dino", help="DINO on image windows (RemixFormer++ HRWE window encoder)")
    src = d.add_argument_group("images")
    src.add_argument("--images", help="folder of images (searched recursively)")
    src.add_argument("--dataset", help="a registered dataset whose image modality is used (e.g. isic2019)")
    src.add_argument("--root", help="the dataset's folder (with --dataset)")
    src.add_argument("--modality", default="dermoscopy", help="image modality of --dataset (default dermoscopy)")
    src.add_argument("--dataset-options", default="{}", help="JSON of adapter options, e.g. '{\"metadata\": false}'")
    d.add_argument("--output", required=True, help="folder for the backbones, config and log")
    d.add_argument("--model", default="dino_vits16", help="registered ViT to train (default dino_vits16)")
    d.add_argument("--model-options", default="{}", help="JSON of model options")
    d.add_argument("--window", type=int, default=256, help="window side (default 256)")
    d.add_argument("--resize", type=int, default=1024, help="images resized to this side before tiling; 0: native")
    d.add_argument("--native-fraction", type=float, default=0.0, help="share of images tiled at native resolution")
    d.add_argument("--global-size", type=int, default=256)
    d.add_argument("--local-size", type=int, default=96)
    d.add_argument("--local-crops", type=int, default=8)
    d.add_argument("--epochs", type=int, default=100)
    d.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (smoke runs)")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--lr", type=float, default=5e-4, help="learning rate for a batch of 256 (scaled linearly)")
    d.add_argument("--warmup-epochs", type=int, default=10)
    d.add_argument("--momentum-teacher", type=float, default=0.996)
    d.add_argument("--out-dim", type=int, default=65536)
    d.add_argument("--no-norm-last-layer", action="store_true", help="let the last layer's weight norm train")
    d.add_argument("--teacher-temp", type=float, default=0.07)
    d.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    d.add_argument("--warmup-teacher-temp-epochs", type=int, default=30)
    d.add_argument("--num-workers", type=int, default=4)
    d.add_argument("--accelerator", default="auto")
    d.add_argument("--precision", default="32-true", help="Lightning precision, e.g. 16-mixed on a GPU")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_dino)
