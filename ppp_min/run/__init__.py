"""A training run: its settings, setup, phases, output directory, checkpoints, resume contract, warm-start cache."""
