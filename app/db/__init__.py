"""Database access. Queries live in ``repository``; nothing outside ``app.db`` writes SQL."""
