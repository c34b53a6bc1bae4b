"""Pure record model: path:value:type records, LTree labels, traversal, diffs, counts (no I/O)."""
