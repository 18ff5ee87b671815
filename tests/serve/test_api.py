"""``mmdiag serve``'s API with FastAPI's test client: every endpoint, probabilities equal to ``mmdiag predict``, the
bad-upload catalogue (each a 4xx naming the field, the server still up), the token and the model card."""

import base64
import io
import json
import tempfile

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from mmdiag.cli.main import main
from mmdiag.serve.app import create_app
from mmdiag.serve.service import CaseService
from mmdiag.serve.uploads import UploadLimits

pytestmark = [pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
              pytest.mark.filterwarnings("ignore:.*no positive cases:UserWarning")]
LIMITS = UploadLimits(max_file_bytes=300_000, max_request_bytes=800_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def service(fusion_run):
    return CaseService(fusion_run, limits=LIMITS)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def _predict_cli(run, capsys, **inputs):
    capsys.readouterr()
    assert main(["predict", "--run", str(run), *[x for k, v in inputs.items() for x in ("--input", f"{k}={v}")]]) == 0
    return json.loads(capsys.readouterr().out)


def test_health_and_model_card(client, fusion_run):
    assert client.get("/healthz").json() == {"status": "ok", "queued": 0}
    card = client.get("/v1/model").json()
    metrics = json.loads((fusion_run / "metrics.json").read_text())
    assert card["model"]["name"] == "middle_fusion" and card["dataset"] == "synthetic" and card["auth"] is False
    assert card["model"]["paper"] is None and card["model"]["description"].startswith("Middle fusion baseline")
    kinds = {m["name"]: m["kind"] for m in card["modalities"]}
    assert kinds == {"clinical": "image", "dermoscopy": "image", "record": "tabular"}
    clinical = next(m for m in card["modalities"] if m["name"] == "clinical")
    assert clinical["size"] == [16, 16] and "png" in clinical["formats"] and clinical["explanation"] == "gradcam"
    age = next(f for m in card["modalities"] if m["kind"] == "tabular" for f in m["fields"] if f["name"] == "age")
    assert (age["unit"], age["min"], age["max"], age["key"]) == ("years", 0, 120, "record.age")
    sex = next(f for m in card["modalities"] if m["kind"] == "tabular" for f in m["fields"] if f["name"] == "sex")
    assert sex["values"] == ["female", "male"]
    spec = json.loads((fusion_run / "dataset_spec.json").read_text())
    assert card["tasks"] == [{"name": "diagnosis", "type": "multiclass",
                              "classes": spec["tasks"]["diagnosis"]["classes"]}]
    m = card["metrics"]["tasks"]["diagnosis"]
    assert m["n"] == metrics["tasks"]["diagnosis"]["n"]
    assert m["acc"]["value"] == metrics["tasks"]["diagnosis"]["acc"]
    assert m["acc"]["ci95"] == metrics["tasks"]["diagnosis"]["ci95"]["acc"]
    assert "not a medical device" in card["intended_use"] and card["limits"]
    assert client.get("/").headers["content-type"].startswith("text/html")
    docs = client.get("/docs").text  # Swagger UI from the package, nothing from a CDN
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "https://" not in docs
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    form = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    props = form["multipart/form-data"]["schema"]["properties"]
    assert props["clinical"]["format"] == "binary" and props["record.sex"]["enum"] == ["female", "male"]
    assert props["record.age"]["minimum"] == 0 and props["record.age"]["maximum"] == 120


def test_predict_equals_mmdiag_predict_and_explains_each_image(client, fusion_run, tmp_path, capsys, payloads):
    (tmp_path / "c.png").write_bytes(payloads.png(1))
    (tmp_path / "d.jpg").write_bytes(payloads.jpeg(2))
    expected = _predict_cli(fusion_run, capsys, clinical=tmp_path / "c.png", dermoscopy=tmp_path / "d.jpg",
                            **{"record.age": "61", "record.sex": "male", "record.marker": "0.4"})
    images = {"clinical": ("x.png", payloads.png(1)), "dermoscopy": ("y", payloads.jpeg(2))}
    r = client.post("/v1/predict", files=images,
                    data={"record.age": "61", "record.sex": "male", "record.marker": "0.4"})
    assert r.status_code == 200, r.text
    out = r.json()
    probs = out["tasks"]["diagnosis"]["probabilities"]
    assert probs == expected["diagnosis"]
    assert out["tasks"]["diagnosis"]["predicted"] == max(probs, key=probs.get)
    assert out["provided"] == ["clinical", "dermoscopy", "record"] and out["missing"] == []
    for m in ("clinical", "dermoscopy"):
        e = out["explanations"][m]
        assert e["method"] == "gradcam" and e["class"] == out["tasks"]["diagnosis"]["predicted"]
        for key in ("image_png", "map_png"):
            head, data = e[key].split(",", 1)
            assert head == "data:image/png;base64"
            assert Image.open(io.BytesIO(base64.b64decode(data))).size == (16, 16)


def test_any_modality_may_be_absent_and_the_record_may_come_as_json(client, fusion_run, tmp_path, capsys, payloads):
    (tmp_path / "d.png").write_bytes(payloads.png(3))
    expected = _predict_cli(fusion_run, capsys, dermoscopy=tmp_path / "d.png", **{"record.site": "trunk"})
    r = client.post("/v1/predict?explain=false", files={"dermoscopy": ("d.png", payloads.png(3))},
                    data={"record": json.dumps({"site": "trunk", "age": None})})
    out = r.json()
    assert r.status_code == 200 and out["tasks"]["diagnosis"]["probabilities"] == expected["diagnosis"]
    assert out["missing"] == ["clinical"] and out["explanations"] == {}
    only_record = client.post("/v1/predict", json={"record.age": 40, "record.sex": "female"})
    assert only_record.status_code == 200 and only_record.json()["provided"] == ["record"]


def _catalogue(p, trap):
    """(name, request kwargs, status, field) of every bad request the service must refuse."""
    img = p.png()
    big = p.npy(__import__("numpy").zeros((300, 300), dtype="float32"))  # 360 kB > the 300 kB file limit
    return [
        ("unknown record field", {"data": {"record.agee": "5"}}, 422, "record.agee"),
        ("unknown file part", {"files": {"clinicl": ("a.png", img)}}, 422, "clinicl"),
        ("not a number", {"data": {"record.age": "sixty"}}, 422, "record.age"),
        ("number out of range", {"data": {"record.age": "500"}}, 422, "record.age"),
        ("not finite", {"data": {"record.age": "inf"}}, 422, "record.age"),
        ("category not allowed", {"data": {"record.sex": "mal"}}, 422, "record.sex"),
        ("record not JSON", {"data": {"record": "{age: 5"}}, 422, "record"),
        ("record JSON not an object", {"data": {"record": "[1, 2]"}}, 422, "record"),
        ("record JSON unknown key", {"data": {"record": '{"agee": 5}'}}, 422, "record.agee"),
        ("image sent as a value", {"data": {"clinical": "photo.png"}}, 422, "clinical"),
        ("empty file", {"files": {"clinical": ("a.png", b"")}}, 422, "clinical"),
        ("text file named .png", {"files": {"clinical": ("a.png", b"hello, I am text" * 20)}}, 415, "clinical"),
        ("NIfTI for an image", {"files": {"clinical": ("a.png", p.nifti())}}, 415, "clinical"),
        ("pickle", {"files": {"clinical": ("a.npy", p.raw_pickle(trap))}}, 415, "clinical"),
        ("npy of objects (pickle)", {"files": {"clinical": ("a.npy", p.npy_pickle(trap))}}, 422, "clinical"),
        ("truncated npy", {"files": {"clinical": ("a.npy", p.npy(__import__("numpy").zeros((64, 64)))[:200])}}, 422,
         "clinical"),
        ("decompression bomb PNG", {"files": {"clinical": ("a.png", p.png_bomb())}}, 413, "clinical"),
        ("corrupt PNG data", {"files": {"clinical": ("a.png", p.png_corrupt_body())}}, 422, "clinical"),
        ("truncated JPEG", {"files": {"dermoscopy": ("a.jpg", p.jpeg(size=64)[:300])}}, 422, "dermoscopy"),
        ("multi-frame DICOM for an image", {"files": {"clinical": ("a.dcm", p.dicom(frames=3))}}, 422, "clinical"),
        ("file over the limit", {"files": {"clinical": ("a.npy", big)}}, 413, "clinical"),
        ("same field twice", {"data": {"record.age": ["5", "6"]}}, 422, "record.age"),
        ("unknown query parameter", {"params": {"explian": "false"}, "data": {"record.age": "5"}}, 422, "explian"),
        ("no input at all", {"data": {"record.age": ""}}, 422, None),
        ("wrong content type", {"content": b"age=5", "headers": {"content-type": "text/plain"}}, 415, None),
        ("malformed multipart", {"content": b"--xyz\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n",
                                 "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400, None),
        ("more files than modalities", {"files": [("clinical", ("a.png", img)), ("dermoscopy", ("b.png", img)),
                                                  ("extra", ("c.png", img))]}, 400, None),
        ("JSON body not an object", {"json": [1, 2]}, 422, None),
        ("body over the request limit", {"content": b"0" * 900_000,
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413, None),
        ("chunked body over the limit", {"content": (b"0" * 100_000 for _ in range(10)),
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413, None),
    ]


def test_bad_upload_catalogue_is_all_4xx_naming_the_field_and_the_server_stays_up(client, payloads, tmp_path,
                                                                                   monkeypatch):
    trap = tmp_path / "pickle_was_executed"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    for name, kwargs, status, field in _catalogue(payloads, str(trap)):
        r = client.post("/v1/predict", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        error = r.json()["error"]
        assert error["status"] == status and error["field"] == field, (name, error)
        if field is not None:
            assert error["message"].startswith(field), (name, error)
        assert str(tmp_path) not in error["message"], (name, error)  # no server paths leak
    assert not trap.exists(), "a pickle was executed"
    assert list((tmp_path / "tmp").iterdir()) == [], "uploads were left on disk"
    assert client.get("/healthz").status_code == 200
    ok = client.post("/v1/predict", files={"clinical": ("a.png", payloads.png())})
    assert ok.status_code == 200, ok.text


def test_dicom_image_is_accepted(client, payloads):
    r = client.post("/v1/predict", files={"clinical": ("scan", payloads.dicom())})
    assert r.status_code == 200, r.text
    assert r.json()["explanations"]["clinical"]["method"] == "gradcam"


def test_token_is_required_on_the_api_when_set(service):
    with TestClient(create_app(service, token="s3cret-token-0123456789")) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        r = c.get("/v1/model")
        assert r.status_code == 401 and r.json()["error"]["field"] == "Authorization"
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/predict", data={"record.age": "5"}).status_code == 401
        good = {"Authorization": "Bearer s3cret-token-0123456789"}
        assert c.get("/v1/model", headers=good).json()["auth"] is True
        assert c.post("/v1/predict", data={"record.age": "5"}, headers=good).status_code == 200


def test_public_host_needs_a_token_file(fusion_run, tmp_path, capsys):
    assert main(["serve", "--run", str(fusion_run), "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("abc\n")
    assert main(["serve", "--run", str(fusion_run), "--host", "0.0.0.0", "--token-file", str(short)]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", "--run", str(tmp_path), "--port", "1"]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """A tiny late-fusion run with the synthetic 3D ``ct`` modality (8 x 16 x 16)."""
    from mmdiag.config import load_config
    from mmdiag.training.run import train

    root = tmp_path_factory.mktemp("serve_volume")
    cfg = load_config(None, [f"output_dir={root}", "model.name=late_fusion", "trainer.max_epochs=1",
                             "trainer.enable_progress_bar=false", "trainer.early_stopping=null", "data.batch_size=16",
                             "data.options.n_cases=40", "data.options.image_size=16", "data.options.with_volume=true",
                             "data.options.volume_size=[8,16,16]"])
    return train(cfg, root / "run").run_dir


@pytest.mark.slow
def test_nifti_volume_case_equals_mmdiag_predict_and_explains_a_slice(volume_run, tmp_path, capsys, payloads):
    nii = payloads.nifti((8, 16, 16), compress=True)
    (tmp_path / "ct.nii.gz").write_bytes(nii)
    expected = _predict_cli(volume_run, capsys, ct=tmp_path / "ct.nii.gz", **{"record.age": "30"})
    with TestClient(create_app(CaseService(volume_run, explain="ig", ig_steps=4))) as c:
        card = c.get("/v1/model").json()
        ct = next(m for m in card["modalities"] if m["name"] == "ct")
        assert ct["kind"] == "volume" and ct["formats"] == ["dicom", "nifti", "npy"]
        r = c.post("/v1/predict", files={"ct": ("scan.bin", nii)}, data={"record.age": "30"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tasks"]["diagnosis"]["probabilities"] == expected["diagnosis"]
    e = out["explanations"]["ct"]
    assert e["method"] == "integrated_gradients" and e["slices"] == 8 and 0 <= e["slice"] < 8
    assert Image.open(io.BytesIO(base64.b64decode(e["map_png"].split(",", 1)[1]))).size == (16, 16)


def test_page_files_are_not_cached_and_the_ablation_table_is_numeric(fusion_run, client):
    from mmdiag.evaluation.ablation import modality_ablation

    assert client.get("/").headers["cache-control"] == "no-cache"
    assert client.get("/static/app.js").headers["cache-control"] == "no-cache"
    assert client.get("/v1/model").json()["missing_modalities"] is None
    modality_ablation(fusion_run, "test", ["all"])
    rows = CaseService(fusion_run).card["missing_modalities"]
    assert [r["condition"] for r in rows] == ["all modalities", "without clinical", "without dermoscopy",
                                              "without record"]
    assert all(isinstance(r["n"], int) and isinstance(r["diagnosis.acc"], float) for r in rows)
