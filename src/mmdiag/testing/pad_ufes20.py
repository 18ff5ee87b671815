"""A tiny PAD-UFES-20 release: ``metadata.csv`` with the 26 real columns, PNG photos (RGBA and RGB) in its folders."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmdiag.data.adapters.pad_ufes20 import CATEGORICAL_FIELDS, CLASSES, COLUMNS
from mmdiag.testing.writers import write_png

__all__ = ["write_pad_ufes20", "NOT_COLLECTED"]

# Columns left blank together in the rows without clinical data (the release leaves its clinical block empty).
NOT_COLLECTED = ("smoke", "drink", "background_father", "background_mother", "pesticide", "gender",
                 "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
                 "diameter_1", "diameter_2")
_CANCERS = ("BCC", "MEL", "SCC")


def write_pad_ufes20(root: str | Path, n_patients: int = 36, size: int = 24, seed: int = 0,
                     layout: Literal["release", "merged"] = "release") -> Path:
    """Write a PAD-UFES-20-shaped dataset under ``root``; returns ``root``.

    Every third patient has two lesions (two rows sharing ``patient_id``); diagnoses cycle through the 6 classes (in
    a mixed order, so patients are not sorted by class); every fourth non-cancer row has no clinical data (blank cells,
    see :data:`NOT_COLLECTED`) and every fifth row answers ``UNK`` to the lesion questions. Photos are PNGs of varying
    size, alternately RGBA (alpha not 255 everywhere) and RGB, named ``PAT_<patient>_<lesion>_<n>.png`` as in the
    release.

    Args:
        layout: ``release`` puts photos in ``images/imgs_part_1..3``; ``merged`` in one ``imgs/`` folder (MetaBlock).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    order = ("BCC", "NEV", "ACK", "SEK", "MEL", "SCC")
    rows, n = [], 0
    for p in range(n_patients):
        for lesion in range(2 if p % 3 == 0 else 1):
            diag = order[n % len(order)]
            img_id = f"PAT_{p + 1}_{100 + n}_{500 + n}.png"
            blank = diag not in _CANCERS and n % 4 == 1
            q = "UNK" if n % 5 == 0 else None
            row = {
                "patient_id": f"PAT_{p + 1}", "lesion_id": str(100 + n),
                "smoke": str(bool(rng.integers(2))), "drink": str(bool(rng.integers(2))),
                "background_father": str(rng.choice(CATEGORICAL_FIELDS["background_father"])),
                "background_mother": str(rng.choice(CATEGORICAL_FIELDS["background_mother"])),
                "age": str(int(rng.integers(18, 90))), "pesticide": str(bool(rng.integers(2))),
                "gender": str(rng.choice(CATEGORICAL_FIELDS["gender"])),
                "skin_cancer_history": str(bool(rng.integers(2))), "cancer_history": str(bool(rng.integers(2))),
                "has_piped_water": str(bool(rng.integers(2))), "has_sewage_system": str(bool(rng.integers(2))),
                "fitspatrick": f"{float(rng.integers(1, 7)):.1f}",
                "region": str(rng.choice(CATEGORICAL_FIELDS["region"])),
                "diameter_1": f"{float(rng.integers(2, 30)):.1f}", "diameter_2": f"{float(rng.integers(2, 30)):.1f}",
                "diagnostic": diag,
                **{k: q or str(bool(rng.integers(2))) for k in ("itch", "grew", "hurt", "changed", "bleed",
                                                                 "elevation")},
                "img_id": img_id, "biopsed": str(diag in _CANCERS or bool(rng.integers(2))),
            }
            if blank:
                row.update({c: "" for c in NOT_COLLECTED})
            rows.append(row)
            h, w = size + 4 * (n % 3), size + 2 * (n % 2)
            img = rng.integers(0, 256, (h, w, 4 if n % 2 == 0 else 3), dtype=np.uint8)
            img[h // 4: 3 * h // 4, w // 4: 3 * w // 4, CLASSES.index(diag) % 3] = 255
            if n % 2 == 0:
                img[..., 3] = rng.integers(1, 256, (h, w), dtype=np.uint8)
            folder = f"images/imgs_part_{n % 3 + 1}" if layout == "release" else "imgs"
            write_png(root / folder / img_id, img)
            n += 1
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(root / "metadata.csv", index=False)
    return root
