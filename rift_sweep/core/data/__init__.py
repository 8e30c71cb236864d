"""Datasets in their published layouts, the train/validation carve, batching, and the OOD corruptions."""
