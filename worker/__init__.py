"""NormLab's worker side: the Celery app and tasks, and the pure training engine (``training``)."""
