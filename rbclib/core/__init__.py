"""Core: what every stage uses. Optics and profiles (``config``, ``profile_schema``), file
I/O and atomic writes (``io``), the run-folder layout (``paths``), class labels (``labels``),
Markdown tables (``markdown``) and ordered background work (``prefetch``). Imports nothing
else of rbclib (docs/ARCHITECTURE.md, "Package map")."""
