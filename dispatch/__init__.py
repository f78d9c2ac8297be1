"""DistConv dispatch server: the coordinator of a distributed transcoding farm."""

__version__ = "1.0.0"
