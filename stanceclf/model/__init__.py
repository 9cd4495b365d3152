"""The model directory: the manifest, the decision rule, the per-architecture table, the model card."""
