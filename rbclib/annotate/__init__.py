"""Stage 02, annotation: cell proposals (``proposals``), replayable decisions (``decisions``), the
session the widget drives (``session``), exports and the split (``export``), the ipywidgets annotator
(``widget``) and the stage's figures (``plots``)."""
