"""The model directory: the manifest, the decision rule, the metrics it records, the per-architecture table,
reading and writing directories, the model card."""
