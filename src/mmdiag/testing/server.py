"""Starting and waiting for a local HTTP server (``mmdiag serve`` in tests and the load benchmark)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "wait_until_up"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url + "/healthz"`` answers 200.

    Raises:
        RuntimeError: ``proc`` exited first, or nothing answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"{url}/healthz did not answer within {timeout:.0f} s")
