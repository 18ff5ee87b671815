"""mamba_ssm's CUDA selective-scan kernels behind ``selective_scan(impl="cuda")``, imported on first use."""

from __future__ import annotations

from torch import Tensor

__all__ = ["INSTALL_HINT", "cuda_scan", "unavailable_reason"]

INSTALL_HINT = "pip install mamba-ssm --no-build-isolation"


def unavailable_reason() -> str | None:
    """Why mamba_ssm's kernels cannot be used here, or ``None`` if they can."""
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
    except Exception as err:  # a broken CUDA extension raises OSError/RuntimeError, not only ImportError
        return (
            f"mamba_ssm could not be imported ({type(err).__name__}: {err}); install it with `{INSTALL_HINT}` "
            "(needs a CUDA build of torch and nvcc)"
        )
    return None


def cuda_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    return_last_state: bool,
) -> Tensor | tuple[Tensor, Tensor]:
    """Call mamba_ssm's ``selective_scan_fn`` (same argument order and semantics)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
