"""``make bench``: run every benchmark module and update its section of docs/benchmarks.md (atomically, after
each module).

Each module ``benchmarks/bench_*.py`` has ``run() -> list[dict]`` and ``to_markdown(rows) -> str`` (and optionally
``TITLE``). ``--only NAME`` runs one module. A module's section (between ``<!-- NAME -->`` markers) is replaced in
place; everything else in the file (header, hand-written sections) is kept.
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


HEADER = ("# Benchmarks\n\nFigures are written by `make bench`; each section below comes from "
          "`benchmarks/<module>.py` and ends with the machine and date it was measured on. Sections without that line "
          "are written by hand and say when and how they were measured.\n")


def _section(name: str, title: str, body: str, seconds: float) -> str:
    return (f"<!-- {name} -->\n## {title}\n\n{body}\n\n_({name}: {seconds:.0f} s; {_machine()})_\n"
            f"<!-- /{name} -->")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output", default="docs/benchmarks.md")
    p.add_argument("--only", action="append", help="run only these modules (others kept from the existing file)")
    args = p.parse_args()
    out = Path(args.output)
    text = out.read_text() if out.is_file() else HEADER
    for name in MODULES:
        if args.only and name not in args.only:
            continue
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            continue
        print(f"running {name} ...", flush=True)
        start = time.time()
        rows = mod.run()
        section = _section(name, getattr(mod, "TITLE", name), mod.to_markdown(rows), time.time() - start)
        old = re.compile(rf"<!-- {name} -->.*?<!-- /{name} -->", re.DOTALL)
        # replaced in place: the header and the hand-written sections around it stay as they are
        found = old.search(text)
        text = (text[:found.start()] + section + text[found.end():] if found
                else text.rstrip("\n") + "\n\n" + section + "\n")
        atomic_write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
