"""Load, soak and speed scripts; run them from the project root, see docs/operations.md."""
