"""The model directory: its file layout, the manifest, the decision rule, the metrics it records, the
per-architecture table, packaged bases, LoRA adapters, the native runtime, reading and writing directories,
the model card."""
