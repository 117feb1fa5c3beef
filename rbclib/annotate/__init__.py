"""Stage 02, annotation: proposals, replayable decisions and splits (``session``), the
ipywidgets annotator (``widget``) and the stage's figures (``plots``)."""
