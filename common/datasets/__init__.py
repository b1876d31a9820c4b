"""Readers of real data sets shipped inside PyPI packages (the ``small`` preset's samples)."""
