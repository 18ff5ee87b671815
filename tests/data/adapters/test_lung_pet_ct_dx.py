"""Lung-PET-CT-Dx adapter: DICOM slice order, HU rescale, windows, grouping, XLSX headers, named errors, a run."""

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

from mmdiag.cli.main import main
from mmdiag.data.adapters._dicom import index_series, read_hu_slices
from mmdiag.data.adapters.lung_pet_ct_dx import (
    MMCAF_TEST_PATIENTS,
    lung_pet_ct_dx,
    normalise_header,
    read_boxes,
    read_clinical,
    series_key,
    series_scores,
)
from mmdiag.data.dataset import CaseDataset
from mmdiag.data.readers import DecodeCache
from mmdiag.data.splits import make_split
from mmdiag.errors import ConfigError, DataError
from mmdiag.testing.lung_pet_ct_dx import ANNOTATIONS_DIR, CLINICAL_XLSX, PATIENTS, write_lung_pet_ct_dx

SIZE = 24
WIDE = (-1024.0, 1024.0)  # a window wide enough to read the fixture's row-0 slice codes back
BY_ID = {p.pid: p for p in PATIENTS}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_lung_pet_ct_dx(tmp_path_factory.mktemp("lung"), size=SIZE)


@pytest.fixture
def copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "lung")


def _series(root, pid, prefix="2.000000"):
    return next(p for p in root.rglob(f"{pid}/*/{prefix}-*") if p.is_dir())


def _codes(x, window=WIDE):
    """Slice indices encoded in row 0 of each slice (HU = -1000 + 20 i) of a (1, D, H, W) window."""
    lo, hi = window
    hu = x[0, :, 0, :].mean(-1).double() * (hi - lo) + lo
    return [round((float(v) + 1000) / 20) for v in hu]


def test_slices_sorted_by_position_and_rescaled_to_hu_exactly(root):
    for pid in ("Lung_Dx-A0001", "Lung_Dx-A0002", "Lung_Dx-A0003"):  # three different slope/intercept pairs
        folder = _series(root, pid)
        files = list(folder.glob("*.dcm"))
        s = index_series(folder, files, pid, 0.1)
        assert s.error is None and s.modality == "CT" and len(s) == BY_ID[pid].n_slices
        assert s.files != sorted(files)  # the file names are shuffled against the positions
        assert np.all(np.diff(s.positions) == 5.0)
        hu = read_hu_slices(s.files, pid)
        assert hu.dtype == np.float32 and hu.shape == (len(s), SIZE, SIZE)
        np.testing.assert_array_equal(hu[:, 0, 0], -1000 + 20 * np.arange(len(s)))
        for i in (0, len(s) - 1):  # independent rescale of the stored values
            ds = pydicom.dcmread(s.files[i])
            expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            np.testing.assert_array_equal(hu[i], expected)
    slopes = {float(pydicom.dcmread(next(_series(root, p).glob("*.dcm"))).RescaleSlope) for p in BY_ID}
    assert slopes == {1.0, 2.0}


def test_dataset_interface(root):
    t = lung_pet_ct_dx(str(root))
    assert t.spec.modalities["ct"].shape == (1, 12, 192, 192)
    assert t.spec.modalities["record"].width == 14
    assert t.spec.tasks["diagnosis"].type == "binary"
    assert t.spec.tasks["diagnosis"].classes == ("adenocarcinoma", "squamous_cell")
    assert {c.patient_id for c in t.cases} == {p for p in BY_ID if p[8] in "AG"}
    assert all(c.labels["diagnosis"] == int(c.patient_id[8] == "G") for c in t.cases)
    x = t.read(t.cases[0], "ct", train=False, rng=np.random.default_rng(0))
    assert x.shape == (1, 12, 192, 192) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    four = lung_pet_ct_dx(str(root), classes="ABEG", image_size=SIZE)
    assert four.spec.tasks["diagnosis"].type == "multiclass"
    assert four.spec.tasks["diagnosis"].classes == ("adenocarcinoma", "small_cell", "large_cell", "squamous_cell")
    assert {c.labels["diagnosis"] for c in four.cases if c.patient_id == "Lung_Dx-B0001"} == {1}


def test_training_windows_are_centred_on_the_tumour(root):
    t = lung_pet_ct_dx(str(root), image_size=SIZE, num_slices=6, hu_window=WIDE, eval_windows="tumour",
                       train_jitter=2)
    tumour_cases = [c for c in t.cases if c.case_id.endswith("@tumour")]
    assert {c.patient_id for c in tumour_cases} == {p for p in BY_ID if p[8] in "AG"}
    for c in tumour_cases:
        p = BY_ID[c.patient_id]
        first, last = p.tumour
        start = min(max((first + last) // 2 - 3, 0), p.n_slices - 6)
        assert _codes(t.read(c, "ct", train=False, rng=np.random.default_rng(0))) == list(range(start, start + 6))
        starts = set()
        for seed in range(30):
            a = t.read(c, "ct", train=True, rng=np.random.default_rng(seed))
            b = t.read(c, "ct", train=True, rng=np.random.default_rng(seed))
            assert (a == b).all()  # reproducible from the per-case generator
            codes = _codes(a)
            assert codes == list(range(codes[0], codes[0] + 6)) and 0 <= codes[0] <= p.n_slices - 6
            assert abs(codes[0] - ((first + last) // 2 - 3)) <= 2 or codes[0] in (0, p.n_slices - 6)
            assert (first + last) // 2 in codes  # the tumour stays in the window
            starts.add(codes[0])
        if 2 <= (first + last) // 2 - 3 <= p.n_slices - 8:  # away from the series' ends
            assert starts == set(range(start - 2, start + 3))  # jittered by ±train_jitter in training
    # the boxes read back as written
    xml = next((root / ANNOTATIONS_DIR / "G0001").glob("*.xml"))
    assert read_boxes(xml) == [("G", (8.0, 8.0, 16.0, 16.0))]


def test_sliding_windows_tile_each_series_and_share_its_key(root):
    t = lung_pet_ct_dx(str(root), image_size=SIZE, num_slices=8, hu_window=WIDE)
    evals = [c for c in t.cases if c.split in ("val", "test")]
    assert evals and not any(c.case_id.endswith("@tumour") for c in evals)
    by_series: dict[str, list] = {}
    for c in evals:
        by_series.setdefault(series_key(c.case_id), []).append(c)
    for key, cs in by_series.items():
        pid = key.split("/", 1)[0]
        n = BY_ID[pid].n_slices  # the longest CT series is the evaluated one
        starts = [int(c.case_id.rsplit("@", 1)[1]) for c in cs]
        assert starts == [*range(0, n - 8 + 1, 8), *([] if (n - 8) % 8 == 0 else [n - 8])]
        assert all(c.patient_id == pid for c in cs)
        covered = set()
        for c in cs:
            covered.update(_codes(t.read(c, "ct", train=False, rng=np.random.default_rng(0))))
        assert covered == set(range(n))
    both = lung_pet_ct_dx(str(root), image_size=SIZE, num_slices=8, eval_series="all")
    keys = {series_key(c.case_id) for c in both.cases if c.split == "test"}
    assert len(keys) == 2 * len({c.patient_id for c in both.cases if c.split == "test"})
    # a 7-slice series is one window padded with air
    short = next(c for c in both.cases if c.split == "test" and both.series[series_key(c.case_id)].folder.name
                 .startswith("3.000000"))
    x = both.read(short, "ct", train=False, rng=np.random.default_rng(0))
    assert x.shape == (1, 8, SIZE, SIZE) and float(x[0, 7].max()) == pytest.approx((-1000 + 1000) / 1400)


def test_series_scores_take_the_max_over_windows():
    df = pd.DataFrame({"case_id": ["P1/1.2@0000", "P1/1.2@0008", "P1/1.3@0000", "P2/9.9@0000"],
                       "diagnosis.true": ["squamous_cell", "squamous_cell", "squamous_cell", "adenocarcinoma"],
                       "diagnosis.prob.squamous_cell": [0.2, 0.9, 0.4, 0.3]})
    out = series_scores(df)
    assert out["series"].tolist() == ["P1/1.2", "P1/1.3", "P2/9.9"]
    assert out["patient"].tolist() == ["P1", "P1", "P2"]
    assert out["score"].tolist() == [0.9, 0.4, 0.3] and out["windows"].tolist() == [2, 1, 1]
    with pytest.raises(DataError, match="no column 'x'"):
        series_scores(df, "x")


def test_splits_are_patient_grouped(root):
    t = lung_pet_ct_dx(str(root), image_size=SIZE)
    split = make_split(t, "auto")
    where = {}
    for name, idx in split.items():
        for i in idx:
            assert where.setdefault(t.cases[i].patient_id, name) == name
    assert set(where.values()) == {"train", "val", "test"}
    for name in ("val", "test"):  # both classes in each evaluation split
        assert {t.cases[i].labels["diagnosis"] for i in split[name]} == {0, 1}
    assert all(t.cases[i].case_id.endswith("@tumour") for i in split["train"])
    other = lung_pet_ct_dx(str(root), image_size=SIZE, split_seed=3)
    assert {c.patient_id: c.split for c in other.cases} != {c.patient_id: c.split for c in t.cases}
    mm = lung_pet_ct_dx(str(root), image_size=SIZE, split="mmcaf")
    assert {c.patient_id for c in mm.cases if c.split == "test"} == set(MMCAF_TEST_PATIENTS) & set(BY_ID)


def test_clinical_headers_are_normalised(root, copy):
    assert normalise_header("\uff34-Stage") == "t_stage" and normalise_header(" weight (kg) ") == "weight_kg"
    assert normalise_header("\u041c-Stage") == "stage" and normalise_header("NewPatientID") == "newpatientid"
    rec = read_clinical(root / CLINICAL_XLSX)
    assert rec["Lung_Dx-A0001"] == {"sex": "M", "age": 61.0, "weight_kg": 70.5, "t_stage": 2.0, "n_stage": 1.0,
                                    "m_stage": 0.0, "smoking_history": 1.0}
    assert rec["Lung_Dx-A0002"]["weight_kg"] is None and rec["Lung_Dx-A0002"]["m_stage"] is None
    assert rec["Lung_Dx-A0003"]["t_stage"] == 0.0 and rec["Lung_Dx-A0003"]["age"] == 72.0
    assert rec["Lung_Dx-G0003"]["t_stage"] == 2.0
    df = pd.read_excel(copy / CLINICAL_XLSX, dtype=object)
    df.loc[1, "Sex"] = "unknown"
    df.to_excel(copy / CLINICAL_XLSX, index=False)
    with pytest.raises(DataError, match=r"row 3 \(patient 'Lung_Dx-A0002'\): sex 'unknown'"):
        read_clinical(copy / CLINICAL_XLSX)
    df.drop(columns=["NewPatientID"]).to_excel(copy / CLINICAL_XLSX, index=False)
    with pytest.raises(DataError, match="no patient-id column"):
        lung_pet_ct_dx(str(copy))


def _eval_case(table, pid):
    return next(c for c in table.cases if c.patient_id == pid)


def test_corrupt_dicom_file_is_named_or_skipped(copy):
    folder = _series(copy, "Lung_Dx-A0003")
    bad = sorted(folder.glob("*.dcm"))[4]
    bad.write_bytes(b"not a dicom file at all")
    t = lung_pet_ct_dx(str(copy), image_size=SIZE)
    case = _eval_case(t, "Lung_Dx-A0003")
    with pytest.raises(DataError, match=rf"case '{case.case_id}': cannot read DICOM file '.*{bad.name}'"):
        t.read(case, "ct", train=False, rng=np.random.default_rng(0))
    idx = [i for i, c in enumerate(t.cases) if c.split == "test"]
    ds = CaseDataset(t, idx, {}, modalities=["ct"])
    skipped = ds.verify("skip")
    assert {b["case_id"] for b in skipped} == {c.case_id for c in t.cases if c.patient_id == "Lung_Dx-A0003"}
    assert all(b["file"] == str(bad) for b in skipped)
    assert ds.case_ids() and all(not c.startswith("Lung_Dx-A0003") for c in ds.case_ids())


def test_undecodable_pixel_data_is_named(copy):
    folder = _series(copy, "Lung_Dx-G0003")
    s = index_series(folder, list(folder.glob("*.dcm")), "x", 0.1)
    ds = pydicom.dcmread(s.files[1])
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(s.files[1])
    t = lung_pet_ct_dx(str(copy), image_size=SIZE)
    case = _eval_case(t, "Lung_Dx-G0003")
    with pytest.raises(DataError, match=rf"case '{case.case_id}': cannot decode DICOM file '.*{s.files[1].name}'"):
        t.read(case, "ct", train=False, rng=np.random.default_rng(0))


def test_inconsistent_spacing_is_named(copy):
    folder = _series(copy, "Lung_Dx-G0003")
    s = index_series(folder, list(folder.glob("*.dcm")), "x", 0.1)
    ds = pydicom.dcmread(s.files[10])
    ds.ImagePositionPatient = [-100.0, -120.0, float(ds.ImagePositionPatient[2]) + 2.0]
    ds.save_as(s.files[10])
    t = lung_pet_ct_dx(str(copy), image_size=SIZE)
    case = _eval_case(t, "Lung_Dx-G0003")
    with pytest.raises(DataError, match=rf"case '{case.case_id}': inconsistent slice spacing: "
                                        rf"'.*{s.files[10].name}' lies 7.000 mm"):
        t.read(case, "ct", train=False, rng=np.random.default_rng(0))
    loose = lung_pet_ct_dx(str(copy), image_size=SIZE, spacing_tolerance=0.5)
    loose.read(_eval_case(loose, "Lung_Dx-G0003"), "ct", train=False, rng=np.random.default_rng(0))


def test_index_cache_is_reused_until_a_series_changes(copy, tmp_path):
    index = tmp_path / "index.json"
    fresh = lung_pet_ct_dx(str(copy), image_size=SIZE)
    first = lung_pet_ct_dx(str(copy), image_size=SIZE, index_cache=str(index))
    assert index.is_file()
    again = lung_pet_ct_dx(str(copy), image_size=SIZE, index_cache=str(index))
    for t in (first, again):
        assert [c.case_id for c in t.cases] == [c.case_id for c in fresh.cases]
        for key, s in t.series.items():
            assert s.files == fresh.series[key].files and s.sop_uids == fresh.series[key].sop_uids
            np.testing.assert_array_equal(s.positions, fresh.series[key].positions)
    # the cache is what the second build used: a cache entry edited by hand shows through
    entries = json.loads(index.read_text())
    folder = str(_series(copy, "Lung_Dx-G0003").resolve())
    entries[folder]["error"] = ["case 'x': planted", "f.dcm"]
    index.write_text(json.dumps(entries))
    planted = lung_pet_ct_dx(str(copy), image_size=SIZE, index_cache=str(index))
    with pytest.raises(DataError, match="planted"):
        planted.read(_eval_case(planted, "Lung_Dx-G0003"), "ct", train=False, rng=np.random.default_rng(0))
    # a changed file invalidates its series' entry: the real problem is found again
    s = fresh.series[series_key(_eval_case(fresh, "Lung_Dx-G0003").case_id)]
    ds = pydicom.dcmread(s.files[10])
    ds.ImagePositionPatient = [-100.0, -120.0, float(ds.ImagePositionPatient[2]) + 2.0]
    ds.save_as(s.files[10])
    changed = lung_pet_ct_dx(str(copy), image_size=SIZE, index_cache=str(index))
    with pytest.raises(DataError, match="inconsistent slice spacing"):
        changed.read(_eval_case(changed, "Lung_Dx-G0003"), "ct", train=False, rng=np.random.default_rng(0))


def test_decode_cache_holds_the_series(root, tmp_path):
    t = lung_pet_ct_dx(str(root), image_size=16, num_slices=8)
    cache = DecodeCache(tmp_path / "cache")
    cases = [c for c in t.cases if c.split == "val"]
    for c in cases:
        direct = t.read(c, "ct", train=False, rng=np.random.default_rng(0))
        cached = t.read(c, "ct", train=False, rng=np.random.default_rng(0), cache=cache)
        assert cached.shape == direct.shape == (1, 8, 16, 16)
        assert float((cached - direct).abs().max()) < 1e-3  # float16 storage
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len({series_key(c.case_id) for c in cases})


def test_option_errors(root):
    with pytest.raises(ConfigError, match=r"data.options.classes='AB' is not one of \['AG', 'ABEG'\]"):
        lung_pet_ct_dx(str(root), classes="AB")
    with pytest.raises(ConfigError, match="data.options.hu_window"):
        lung_pet_ct_dx(str(root), hu_window=(400, -1000))
    with pytest.raises(ConfigError, match="data.options.clinical='nope.xlsx'"):
        lung_pet_ct_dx(str(root), clinical="nope.xlsx")
    with pytest.raises(DataError, match="no patient folders"):
        lung_pet_ct_dx(str(root / ANNOTATIONS_DIR))


@pytest.mark.slow
def test_train_end_to_end_and_series_scores(root, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "data.dataset=lung_pet_ct_dx", f"data.root={root}",
                 "data.options.image_size=16", "data.options.num_slices=8", "data.batch_size=2",
                 f"data.cache_dir={tmp_path / 'cache'}", "model.name=late_fusion", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false"]) == 0
    preds = pd.read_csv(run / "predictions.csv")
    t = lung_pet_ct_dx(str(root), image_size=16, num_slices=8)
    assert sorted(preds["case_id"]) == sorted(c.case_id for c in t.cases if c.split == "test")
    scores = series_scores(preds)
    assert len(scores) == 2 and set(scores["true"]) == {"adenocarcinoma", "squamous_cell"}
