"""ASGI application: websockets through Channels, HTTP through Django's WSGI handler.

Plain HTTP requests (the REST API, the portal, the admin) are synchronous Django code. Served by
Django's ASGI handler, each one hops event loop -> new thread -> event loop -> thread (a fresh
thread per request, and the response handed back through asgiref), which cost ~1.3 ms of CPU per
request: 20-30 % of a cheap authenticated API call (measured: ``GET /api/v1/me`` 6.1-7.2 -> 5.0-5.3 ms
of server CPU, 18-36 % more requests/s per process). Here they run on Django's WSGI handler in a fixed
pool of ``OTB_HTTP_THREADS`` threads (a2wsgi), in the same uvicorn process that serves the websockets.
The config poll's 304 fast path answers before either (provisioning/checkin.py), and so does the idle
poll of stock OverTheBox boxes (otbcompat/fastpath.py).
"""

from __future__ import annotations

import os
from typing import Any, cast

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_wsgi_app = get_wsgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from config.websocket_routing import websocket_urlpatterns  # noqa: E402
from otbcompat.fastpath import OtbTodoFastPath  # noqa: E402
from provisioning.checkin import ConfigNotModifiedFastPath  # noqa: E402

http_application = WSGIMiddleware(
    cast(Any, django_wsgi_app), workers=int(cast(dict[str, Any], settings.OTB)["HTTP_THREADS"])
)

application = ProtocolTypeRouter(
    {
        "http": OtbTodoFastPath(ConfigNotModifiedFastPath(http_application)),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
