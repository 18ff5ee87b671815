"""``make bench``: run every benchmark module and write docs/benchmarks.md (atomically).

Each module ``benchmarks/bench_*.py`` has ``run() -> list[dict]`` and ``to_markdown(rows) -> str`` (and optionally
``TITLE``). ``--only NAME`` runs one module; the others' sections are kept from the existing file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import time
from pathlib import Path

import torch

from mmdiag.io.atomic import atomic_write_text

MODULES = ["bench_foundation", "bench_scan", "bench_medmamba", "bench_ei", "bench_iimgf", "bench_mmcaf", "bench_remixformer",
           "bench_serve"]


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "?"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, measured {time.strftime('%Y-%m-%d')}")


def _sections(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"<!-- (bench_\w+) -->.*?<!-- /\1 -->", text, re.S)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output", default="docs/benchmarks.md")
    p.add_argument("--only", action="append", help="run only these modules (others kept from the existing file)")
    args = p.parse_args()
    out = Path(args.output)
    old = _sections(out.read_text()) if out.is_file() else {}
    parts = ["# Benchmarks", "", f"Machine: {_machine()}.", "",
             "Figures are written by `make bench`; each section below comes from `benchmarks/<module>.py`.", ""]
    for name in MODULES:
        if args.only and name not in args.only:
            if name in old:
                parts += [old[name], ""]
            continue
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            continue
        print(f"running {name} ...", flush=True)
        start = time.time()
        rows = mod.run()
        title = getattr(mod, "TITLE", name)
        parts += [f"<!-- {name} -->", f"## {title}", "", mod.to_markdown(rows), "",
                  f"_({name}: {time.time() - start:.0f} s)_", f"<!-- /{name} -->", ""]
    atomic_write_text(out, "\n".join(parts))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
