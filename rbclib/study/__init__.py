"""Applying trained models to users' data: ``segmenter`` (a model on phase maps of any pixel
size, with clean-up), ``inputs`` (what ``rbc assess`` works on, and its model), ``image`` (one
image: phase, segmentation, measurements), ``assess`` (``rbc assess`` end to end),
``storage`` (class ratios per storage day, the report) and ``transfer`` (checks on other
optics and real holograms)."""
