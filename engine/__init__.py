"""theme-engine's compute layer: pure kernels and data contracts. Never imports Ray."""

__version__ = "0.1.0"
