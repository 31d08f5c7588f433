"""A quiet worker by default: one line per experiment state change (``worker.runner``) and the
warnings that matter. Celery's banner, its per-task lines and known-harmless warnings (running as
root in a container, kombu's "No hostname was supplied" for the embedded filesystem queue) show
only with ``--verbose`` (``NORMLAB_VERBOSE``)."""

from __future__ import annotations

import logging
import warnings

from celery.exceptions import SecurityWarning
from celery.signals import after_setup_logger

from app.core.config import get_settings

# Loggers whose INFO lines repeat what the experiment's own lines say, or say nothing an
# operator acts on ("Task … received", "Task … succeeded in …", "Connected to …").
NOISY = ("celery.worker.strategy", "celery.app.trace", "celery.worker.consumer.connection")
HARMLESS = ("kombu.connection",)  # "No hostname was supplied": the filesystem queue has none


def quiet_logging(**_: object) -> None:
    if get_settings().verbose:
        return
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in HARMLESS:
        logging.getLogger(name).setLevel(logging.ERROR)


if not get_settings().verbose:
    # Containers run workers as root; celery warns about it at every start (it only matters
    # with pickle, which this app never accepts).
    warnings.filterwarnings("ignore", category=SecurityWarning)
    quiet_logging()
after_setup_logger.connect(quiet_logging, weak=False)  # again, after celery configured logging
