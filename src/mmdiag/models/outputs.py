"""Keys of a multimodal model's output besides its per-task logits (read by :mod:`mmdiag.training.system`).

``{AUX_KEY: {term: (weight, {task: logits})}}``: each term is scored with the same task loss as the main logits and
added with its weight (e.g. EI's per-modality predictions). ``{AUX_LOSS_KEY: {term: (weight, scalar)}}``: terms that
are not a task loss on logits (EI's gate-versus-prior cross-entropy, DynMM's resource cost), added as given.
"""

__all__ = ["AUX_KEY", "AUX_LOSS_KEY"]

AUX_KEY = "aux"
AUX_LOSS_KEY = "aux_loss"
