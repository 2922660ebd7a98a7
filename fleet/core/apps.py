import functools
import logging

import redis.utils
from django.apps import AppConfig

from fleet.core.logging import AccessLogRedactFilter


def _cache_redis_lib_version() -> None:
    """redis-py (8.1) reads its own package metadata, parsing the METADATA file with the email
    parser, every time it makes a connection (``redis.utils.get_lib_version``, for CLIENT SETINFO):
    0.55 ms each here, paid by every channel-layer connection of a reconnect storm. The answer cannot
    change while the process runs."""
    if not hasattr(redis.utils.get_lib_version, "cache_info"):
        redis.utils.get_lib_version = functools.cache(redis.utils.get_lib_version)


class FleetConfig(AppConfig):
    name = "fleet.core"
    label = "fleet"
    verbose_name = "Fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        _cache_redis_lib_version()
        # uvicorn's access log (``make run``; production runs with --no-access-log) names the full
        # path and query string with its own formatter: redact them at the record.
        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(existing, AccessLogRedactFilter) for existing in access.filters):
            access.addFilter(AccessLogRedactFilter())
