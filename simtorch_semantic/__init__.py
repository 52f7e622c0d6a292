"""simtorch_semantic: compare what neural networks represent, layer by layer."""

__version__ = "0.1.0"
