"""Fixtures of the end-to-end tests. The browser ones (uvicorn, Chromium, a page) live in
``tests/e2e/browser.py`` and are registered here once, so the session-scoped browser is shared."""

from tests.e2e.browser import asgi_server, browser, page  # noqa: F401
