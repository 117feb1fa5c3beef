"""Core: what every stage uses. Optics (``config``), atomic writes and tables (``files``),
image I/O (``io``), the run-folder layout (``paths``), class labels (``labels``), Markdown
tables (``markdown``), ordered background work (``prefetch``), the training scaffold
(``training``) and data-parallel training (``distributed``). Imports nothing
else of rbclib (docs/ARCHITECTURE.md, "Package map")."""
