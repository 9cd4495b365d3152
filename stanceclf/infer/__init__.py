"""Model directories to scores: the loaded model, backends, the predict API, corpus scoring."""
