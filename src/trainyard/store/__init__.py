"""The state store: one interface, one SQL implementation for PostgreSQL and SQLite."""
