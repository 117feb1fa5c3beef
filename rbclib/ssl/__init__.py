"""Self-supervised pretraining (stage 05): corpora, MoCo v2 + reconstruction, transfer into
the ResUnet and the probes (``pretrain``)."""
