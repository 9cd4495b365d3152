"""Annotations to sentence datasets: label schemas, documents, annotation readers, sentence splitting,
the dataset builder, annotation sheets and inter-annotator agreement."""
