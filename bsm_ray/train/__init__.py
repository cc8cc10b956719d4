"""Distributed training: configs, LR schedules, the loop (written once against a small context),
checkpoints, and the Ray Train launcher. Importing this package does not import ray or torch."""
