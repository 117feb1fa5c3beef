"""Synthesis (stages 03-04): the denoising diffusion GANs (``nets``, ``ddgan``), their
scores (``scores``) and the curation of synthetic phase/mask pairs (``curate``)."""
