"""Choosing types for a size budget: the importance matrix (:mod:`.imatrix`) and what builds on it."""
