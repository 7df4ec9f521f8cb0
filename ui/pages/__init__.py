"""The window's pages: the tabs beside the tensor tree (tensor, metadata, error, compare, generate, optimize),
the analysis dock and the welcome page."""
