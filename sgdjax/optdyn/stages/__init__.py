"""Stages of the optimizer-dynamics study: ``train`` (named runs) and ``sweep`` (lr grids)."""
