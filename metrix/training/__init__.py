"""Training: configuration and recipes, the trainer, checkpoints and run reports."""
