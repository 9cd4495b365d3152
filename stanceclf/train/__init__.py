"""Recipes to model directories: base models, the fine-tuning harness, calibration, metrics, evaluation."""
