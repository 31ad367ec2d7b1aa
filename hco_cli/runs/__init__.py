"""A run folder and its files: checkpoints, run.json, config.yaml; below training and inference."""
