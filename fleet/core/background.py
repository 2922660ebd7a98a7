"""Queueing background work from a service.

Services queue a Celery task by its registered name rather than by importing the task module: task
modules are edges that call services (parse ids, call one service), so the import goes one way only.
The task object is looked up in the Celery app's registry, so ``.delay`` behaves exactly as if it had
been imported (routing by queue, eager mode in tests).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app

logger = logging.getLogger(__name__)


def task_queue(name: str, *args: Any) -> bool:
    """Queue the task registered as ``name`` with ``args``; False (logged) if the broker refused.
    Callers queue only work that a periodic sweep would also find, so a lost message delays it only."""
    try:
        if name not in current_app.tasks:
            # Celery imports the apps' task modules (autodiscovery) when a worker starts; a web
            # process imports them on its first queueing instead.
            current_app.loader.import_default_modules()
        current_app.tasks[name].delay(*args)
    except Exception:
        logger.warning("could not queue %s%r", name, args, exc_info=True)
        return False
    return True
