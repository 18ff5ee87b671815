"""Overrides that shrink the shipped RemixFormer++ configs to a tiny model and 64 px images (tests, demos)."""

TINY_OVERRIDES = [
    "trainer.enable_progress_bar=false", "trainer.max_epochs=2", "data.batch_size=4", "data.options.image_size=64",
    "model.options.clinical_options={embed_dim: 16, depths: [2, 2, 2, 2], num_heads: [1, 2, 2, 4], window_size: 4, "
    "drop_path_rate: 0.0, global_size: 64, k_p: 2, crop_size: 32, csf_heads: 4}",
    "model.options.dermoscopy_options={window_size: 32, patch_size: 16, embed_dim: 32, depth: 1, num_heads: 2, "
    "region_depth: 1, num_templates: 4, chunk_size: 2}",
    "model.options.fusion_dim=32", "model.options.fusion_heads=4", "optim.lr=1e-2",
    "data.augment.image=[{name: RandomHorizontalFlip, p: 0.5}, {name: RandomResizedCrop, size: [64, 64], "
    "scale: [0.65, 1.0], p: 1.0}]"]
