"""models/nets: whole systems built from a dataset spec (the model contract's multimodal side)."""
