"""Database access: the ORM models (``models``), migrations (``migrate``) and the queries, in
modules named for what they keep (``experiments``, ``lifecycle``, ``metrics``, ``series``,
``rollups``, ``keys``). SQL belongs here: routes, the worker and the CLI call these modules."""
