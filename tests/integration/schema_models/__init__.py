"""Variants of one entity model, one module each, as an application would change it between
releases (tests/integration/test_schema_changes.py imports them by "module:Class")."""
