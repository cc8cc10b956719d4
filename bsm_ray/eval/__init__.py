"""Evaluation of trained models (perplexity per modality; more tasks build on it)."""
