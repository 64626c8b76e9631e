"""The Python DSL."""
