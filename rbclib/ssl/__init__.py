"""Self-supervised pretraining (stage 05): the corpora and probe sets (``corpus``), MoCo v2 +
reconstruction and the transfer into the ResUnet (``pretrain``), and the k-NN / linear
probes (``probe``)."""
