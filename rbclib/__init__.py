"""rbc-holo: digital holographic microscopy of stored red blood cells.

The package map (which module does what, what each stage reads and writes, conventions) is
docs/ARCHITECTURE.md in the repository.
"""

__version__ = "0.1.0"
