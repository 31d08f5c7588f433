"""Where metric points live: one interface (``interface.MetricStore``) and two implementations,
``portable`` (SQLite, through SQLAlchemy) and ``postgres`` (psycopg 3: COPY, driver-level pages,
packed points bucketed with numpy, series blocks). ``app.db.session`` picks one per engine, when
it creates the engine; everything else reaches the store through ``session.metric_store``."""
