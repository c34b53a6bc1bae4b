"""Database access: connections and the SQL run at runtime."""
