"""Load and soak scripts (issue 7); run them from the project root, see docs/operations.md."""
