"""Safe, atomic reading and writing of weights, run state and reports."""

from mmdiag.io.atomic import atomic_write_bytes, atomic_write_text
from mmdiag.io.checkpoint import load_checkpoint, load_state_dict_file, save_weights

__all__ = ["atomic_write_bytes", "atomic_write_text", "load_checkpoint", "load_state_dict_file",
           "save_weights"]
