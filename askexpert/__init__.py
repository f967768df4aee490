"""Ask the Expert: shared library for the edge node, the expert hub and the trainer."""

__version__ = "0.1.0"
