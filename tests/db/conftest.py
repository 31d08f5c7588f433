"""Database fixtures live in tests/conftest.py (``db_url``, ``session``): the API tests that
must also run on Postgres use them too."""
