"""The EI authors' split lists (paper 003), shipped as package data under ``mmdiag/data/splits_data/ei/``.

Provenance: folder ``datasplit/`` of the public repository ``ruc-aimc-lab/EI`` at commit
``29c021fabd06c62a95d2fc9232e8ab5dd3b94fd3``, copied byte for byte (character counts checked against the originals).
The oversampled ``*_train_balance`` lists are not shipped: they repeat the train lists' cases.

Each ``<collection>/anno.txt`` holds one case per line::

    <files of modality 0>,<files of modality 1>[,<files of modality 2>]<TAB><label>[,<label>...]

A modality cell may name several space-separated files (MMC-AMD: several OCT B-scans of one eye); the label field is
empty for a normal MRNet knee. ``mapping_<dataset>.json`` gives the class index of each label name.

========  ================================  ==========================================================
dataset   collections (train / val / test)  what they are
========  ================================  ==========================================================
derm7pt   derm7pt_{train,val,test}          the official Derm7pt split (413 / 203 / 395 cases);
                                            columns clinical, dermoscopic
mmc_amd   mmc-amd_{train,val,test}          610 / 79 / 79 eyes with a CFP and an OCT (the counts of the
                                            official splitAP's eyes with both); columns CFP, OCT
mrnet     mrnet_train_train / _train_val /  1010 official-train exams / 120 official-train exams held
          mrnet_val                         out at random / the official validation set (1130-1249)
                                            used as test; columns axial, coronal, sagittal
========  ================================  ==========================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["EIEntry", "EI_COLLECTIONS", "ei_list", "ei_mapping", "ei_split_lists"]

EI_COLLECTIONS: dict[str, dict[str, str]] = {
    "derm7pt": {"train": "derm7pt_train", "val": "derm7pt_val", "test": "derm7pt_test"},
    "mmc_amd": {"train": "mmc-amd_train", "val": "mmc-amd_val", "test": "mmc-amd_test"},
    "mrnet": {"train": "mrnet_train_train", "val": "mrnet_train_val", "test": "mrnet_val"},
}
_MAPPING_FILES = {"derm7pt": "mapping_derm7pt.json", "mmc_amd": "mapping_mmc-amd.json", "mrnet": "mapping_mrnet.json"}


@dataclass(frozen=True)
class EIEntry:
    """One line of an EI list: the files of each modality column (relative to EI's image root) and the labels."""

    paths: tuple[tuple[str, ...], ...]
    labels: tuple[str, ...]


def _folder():
    return resources.files("mmdiag.data").joinpath("splits_data", "ei")


@lru_cache(maxsize=None)
def ei_list(collection: str) -> tuple[EIEntry, ...]:
    """The entries of one shipped EI list, e.g. ``ei_list("mrnet_train_val")``, in file order."""
    text = _folder().joinpath(collection, "anno.txt").read_text(encoding="utf-8")
    entries = []
    for line in text.splitlines():
        cells, _, labels = line.partition("\t")
        entries.append(EIEntry(tuple(tuple(c.split(" ")) for c in cells.split(",")),
                               tuple(x for x in labels.split(",") if x)))
    return tuple(entries)


@lru_cache(maxsize=None)
def ei_mapping(dataset: str) -> dict[str, int]:
    """EI's label name → class index of ``dataset`` (``derm7pt``, ``mmc_amd`` or ``mrnet``)."""
    return json.loads(_folder().joinpath(_MAPPING_FILES[dataset]).read_text(encoding="utf-8"))


def ei_split_lists(dataset: str) -> dict[str, tuple[EIEntry, ...]]:
    """The train / val / test entries EI used for ``dataset``."""
    return {split: ei_list(collection) for split, collection in EI_COLLECTIONS[dataset].items()}
