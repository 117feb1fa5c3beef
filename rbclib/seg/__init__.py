"""Segmentation (stages 06-07): tiles, datasets and normalisation, models, training,
inference, metrics, evaluation tables and compute cost."""
