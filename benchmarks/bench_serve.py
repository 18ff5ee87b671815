"""Load test of ``mmdiag serve``: N concurrent clients on 127.0.0.1 for a fixed time, per model size.

For each model a tiny run is trained (1 epoch, so the weights are real but the accuracy is not the point), served by
``mmdiag serve`` in its own process, warmed up, then hit by ``CLIENTS`` threads, each posting one case (every image
modality and the record, explanation maps on, as the page does) in a loop for the model's time. Reported: requests,
errors (any non-200), throughput, p50/p95 latency, and the server's resident memory (VmRSS, sampled every 0.25 s)
after warm-up, at the end, its maximum, and the drift between the second and the last quarter of the run (a leak
shows as a drift that grows with the run's length).
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TITLE = "`mmdiag serve` under load: latency, throughput and server memory per model size"
CLIENTS = 4
MODELS = {  # label: (overrides, image side, seconds of load: long enough for about 100 requests)
    "small: middle_fusion (small_cnn), 32 px": (["model.name=middle_fusion"], 32, 20.0),
    "medium: late_fusion (resnet18), 224 px": (["model.name=late_fusion", "model.options.backbone=resnet18"], 224,
                                                90.0),
    "large: late_fusion (medmamba_t), 224 px": (["model.name=late_fusion", "model.options.backbone=medmamba_t"], 224,
                                                90.0),
}


def _train(root: Path, overrides: list[str], side: int) -> Path:
    from mmdiag.config import load_config
    from mmdiag.training.run import train

    cfg = load_config(None, [f"output_dir={root}", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                             "trainer.early_stopping=null", "data.batch_size=8", "data.options.n_cases=24",
                             f"data.options.image_size={side}", *overrides])
    return train(cfg, root / "run").run_dir


def _png(side: int, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(url: str, side: int, pid: int, seconds: float) -> dict[str, Any]:
    import httpx

    files = {"clinical": ("c.png", _png(side, 1), "image/png"), "dermoscopy": ("d.png", _png(side, 2), "image/png")}
    fields = {"record.age": "61", "record.sex": "male", "record.site": "trunk", "record.marker": "0.3"}
    with httpx.Client(timeout=120) as c:
        for _ in range(3):  # warm-up
            c.post(url + "/v1/predict", files=files, data=fields).raise_for_status()
    latencies: list[float] = []
    errors, rss, stop = [0], [], threading.Event()

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while not stop.is_set():
                t = time.perf_counter()
                r = c.post(url + "/v1/predict", files=files, data=fields)
                latencies.append(time.perf_counter() - t)
                errors[0] += r.status_code != 200

    def sampler() -> None:
        while not stop.is_set():
            rss.append(_rss_mb(pid))
            time.sleep(0.25)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)] + [threading.Thread(target=sampler)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    q = max(len(rss) // 4, 1)
    lat = sorted(latencies)
    return {"seconds": seconds, "requests": len(lat), "errors": errors[0], "throughput": len(lat) / elapsed,
            "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "rss_start": rss[0], "rss_end": rss[-1], "rss_max": max(rss),
            "drift": statistics.mean(rss[-q:]) - statistics.mean(rss[q:2 * q])}


def run() -> list[dict[str, Any]]:
    import httpx

    from mmdiag.testing.server import free_port, wait_until_up

    rows = []
    for label, (overrides, side, seconds) in MODELS.items():
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = _train(Path(tmp), overrides, side)
            port = free_port()
            server = subprocess.Popen([sys.executable, "-m", "mmdiag", "serve", "--run", str(run_dir), "--port",
                                       str(port), "--queue", str(4 * CLIENTS)], stdout=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}"
                wait_until_up(url, 120, server)
                params = httpx.get(url + "/v1/model").json()["model"]["parameters"]
                rows.append({"model": label, "parameters": params, **_load(url, side, server.pid, seconds)})
            finally:
                server.terminate()
                server.wait(30)
    rows.append({"load": os.getloadavg()[0]})
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    load = rows[-1]["load"]
    header = ("| model | parameters | seconds | requests | errors | requests/s | p50 (s) | p95 (s) | "
              "RSS after warm-up (MB) | RSS end (MB) | RSS max (MB) | drift Q2→Q4 (MB) |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows[:-1]:
        lines.append(f"| {r['model']} | {r['parameters']:,} | {r['seconds']:.0f} | {r['requests']} | "
                     f"{r['errors']} | "
                     f"{r['throughput']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | {r['rss_start']:.0f} | "
                     f"{r['rss_end']:.0f} | {r['rss_max']:.0f} | {r['drift']:+.1f} |")
    return "\n".join(lines) + (
        f"\n\nMethod: {CLIENTS} client threads on the same machine for the given seconds per model, each posting "
        "one "
        "case (two PNG images and four record fields, explanation maps on: Grad-CAM per image) in a loop to "
        "`mmdiag serve` "
        "(one process, one inference thread, CPU); latency is the client's round trip, including waiting in the "
        f"server's queue. The clients share the 2 cores with the server. 1-min load average at the end: {load:.1f}.")
