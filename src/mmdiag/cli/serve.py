"""``mmdiag serve``: a finished run as a local HTTP service with a case page (see :mod:`mmdiag.serve`)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

__all__ = ["read_token", "register"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | None, host: str) -> str | None:
    """The bearer token from ``--token-file`` (first line).

    Raises:
        ConfigError: a non-loopback ``--host`` without a token file, or a missing, empty or short token file.
    """
    from mmdiag.errors import ConfigError

    if path is None:
        if not _is_loopback(host):
            raise ConfigError(f"--host {host} is reachable from other machines: give --token-file FILE holding a "
                              "bearer token (at least 16 characters) that clients must send")
        return None
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--token-file {str(file.resolve())!r} does not exist")
    lines = file.read_text(encoding="utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise ConfigError(f"--token-file {str(file.resolve())!r}: the token (its first line) must have at least 16 "
                          f"characters; it has {len(token)}")
    return token


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mmdiag.serve.app import create_app
    from mmdiag.serve.service import CaseService
    from mmdiag.serve.uploads import UploadLimits

    token = read_token(args.token_file, args.host)
    limits = UploadLimits(max_file_bytes=int(args.max_file_mb * 2**20),
                          max_request_bytes=int(args.max_request_mb * 2**20))
    service = CaseService(args.run, explain=args.explain, ig_steps=args.ig_steps, limits=limits, device=args.device)
    app = create_app(service, token=token, queue_limit=args.queue, timeout=args.timeout)
    access = ("local only, no token" if token is None and _is_loopback(args.host) else
              f"bearer token required (from {args.token_file})")
    print(f"mmdiag serve: {service.card['model']['name']} from {Path(args.run).resolve()} on "
          f"http://{args.host}:{args.port}/ ({access}; API docs at /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="serve a finished run over HTTP: a case page for clinicians and a JSON API "
                                     "(/v1/model, /v1/predict, /docs)")
    s.add_argument("--run", required=True, help="finished run folder (mmdiag train output)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; "
                                                        "any other address needs --token-file)")
    s.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    s.add_argument("--token-file", help="file whose first line is the bearer token clients must send on /v1/* "
                                        "(Authorization: Bearer TOKEN); required with a non-local --host")
    s.add_argument("--explain", default="auto", choices=["auto", "gradcam", "ig", "none"],
                   help="explanation maps: auto = Grad-CAM where the model names a layer for the modality, else "
                        "Integrated Gradients (default: auto)")
    s.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps (default: 16)")
    s.add_argument("--queue", type=int, default=8, help="requests waiting or running at once; more get 503 "
                                                        "(default: 8)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds per prediction before 504 (default: 60)")
    s.add_argument("--max-file-mb", type=float, default=32.0, help="largest upload per file, MiB (default: 32)")
    s.add_argument("--max-request-mb", type=float, default=96.0, help="largest request body, MiB (default: 96)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    s.set_defaults(fn=_serve)
