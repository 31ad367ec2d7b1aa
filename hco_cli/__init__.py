"""hco: semi-supervised 3D medical image segmentation with Hierarchical Cautious Optimization."""

__version__ = "0.1.0"
