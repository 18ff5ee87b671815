import numpy as np
import pydicom
import torch
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mmdiag.config.schema import DataConfig
from mmdiag.data.datamodule import MultimodalDataModule
from mmdiag.data.readers import read_volume
from mmdiag.data.schema import VolumeModality
from mmdiag.data.synthetic import synthetic


def test_oversampling_balances_the_main_task():
    table = synthetic(n_cases=1200)
    keep = [c for c in table.cases if c.labels["diagnosis"] < 2 or c.case_id.endswith("0")]
    table.cases = keep  # classes 2..7 now rare
    dm = MultimodalDataModule(table, DataConfig(batch_size=len(keep), sampling="oversample",
                                                split={"kind": "kfold", "folds": 2}))
    dm.setup()
    labels = torch.cat([b["labels"]["diagnosis"] for b in dm.train_dataloader()])
    counts = torch.bincount(labels, minlength=8).float()
    plain = torch.bincount(torch.tensor([table.cases[i].labels["diagnosis"] for i in dm.split["train"]]), minlength=8)
    assert plain[:2].min() > 3 * plain[2:].max()  # imbalanced to begin with
    assert counts.max() / counts.min() < 3  # roughly balanced after oversampling


def test_dicom_series_folder_reads_as_a_volume(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    uid = generate_uid()
    for z in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID = uid, uid
        ds.Modality, ds.PatientID = "CT", "p1"
        ds.Rows, ds.Columns = 8, 8
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(z)], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = z + 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = (np.full((8, 8), 100 * z, dtype=np.int16)).tobytes()
        ds.save_as(series / f"{z}.dcm", enforce_file_format=True)
    x = read_volume(series, VolumeModality(size=(3, 8, 8), intensity_range=(0.0, 200.0)), case_id="ct1")
    assert x.shape == (1, 3, 8, 8)
    slice_means = sorted(x[0].mean((1, 2)).tolist())
    np.testing.assert_allclose(slice_means, [0.0, 0.5, 1.0], atol=1e-5)
