"""Bounded concurrency on a real uvicorn server: a full queue answers 503 at once, a slow prediction 504, and the
server keeps serving."""

import threading
import time

import httpx
import pytest
import uvicorn

from mmdiag.serve.app import create_app
from mmdiag.serve.service import CaseService
from mmdiag.testing.server import free_port, wait_until_up


@pytest.fixture
def serve(fusion_run):
    """Start a server for a service whose ``predict`` the test controls; yields (url, service, release event)."""
    servers = []

    def start(**app_options):
        service = CaseService(fusion_run)
        release = threading.Event()

        def blocking_predict(files, fields, explain=True):
            release.wait(10)
            return {"ok": True}

        service.predict = blocking_predict
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(service, **app_options), host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread, release))
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, 30)
        return url, release

    yield start
    for server, thread, release in servers:
        release.set()
        server.should_exit = True
        thread.join(10)


def _queued(url):
    return httpx.get(url + "/healthz").json()["queued"]


def _wait_queued(url, n):
    for _ in range(200):
        if _queued(url) == n:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue never reached {n}")


def test_full_queue_answers_503_and_the_waiting_request_completes(serve):
    url, release = serve(queue_limit=2, timeout=30)
    results = []
    workers = [threading.Thread(target=lambda: results.append(
        httpx.post(url + "/v1/predict", data={"record.age": "5"}, timeout=30))) for _ in range(2)]
    for w in workers:
        w.start()
    _wait_queued(url, 2)
    busy = httpx.post(url + "/v1/predict", data={"record.age": "5"}, timeout=5)
    assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
    release.set()
    for w in workers:
        w.join(30)
    assert [r.status_code for r in results] == [200, 200]
    _wait_queued(url, 0)


def test_slow_prediction_times_out_with_504_and_frees_its_slot_when_done(serve):
    url, release = serve(queue_limit=1, timeout=0.3)
    slow = httpx.post(url + "/v1/predict", data={"record.age": "5"}, timeout=10)
    assert slow.status_code == 504 and "longer than 0.3 s" in slow.json()["error"]["message"]
    assert _queued(url) == 1  # the worker is still busy with it: the slot stays taken
    assert httpx.post(url + "/v1/predict", data={"record.age": "5"}, timeout=5).status_code == 503
    release.set()
    _wait_queued(url, 0)
    assert httpx.get(url + "/healthz").status_code == 200
