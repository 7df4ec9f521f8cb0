"""Qt item models over core results (tensor tree, error statistics, importance-matrix statistics)."""
