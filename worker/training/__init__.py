"""The training engine: pure PyTorch + numpy. Config in, metrics out.

Nothing here may import Celery, SQLAlchemy or FastAPI (tests/training/test_layering.py checks).
"""
