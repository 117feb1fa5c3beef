"""Physics: holograms to phase (``holography``), the digital twin (``simulate``), per-cell
measurements (``measure``) and the twin-vs-real image statistics (``realism``)."""
