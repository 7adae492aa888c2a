"""Purchase capture and a small social feed over raw SQL, on SQLite or PostgreSQL."""
