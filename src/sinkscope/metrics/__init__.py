"""What to compute: pure functions from tensors to tensors, shapes in their docstrings."""
