"""Reusable widgets: the tensor tree and its plan bar, the status bar, charts and plots, small controls."""
