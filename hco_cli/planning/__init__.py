"""Planning (``hco plan``): spacing, patch, network layout and batch sizes from a dataset's
fingerprint and a GPU memory target; above ``data`` and ``models``, below ``training``."""
