"""Long-running processes: assembly, the worker, the backfill, progress, signals."""
