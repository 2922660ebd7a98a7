"""Absolute links the service sends (emails, webhook payloads, API page links): all of them start
with the one configured public address, ``settings.OTB_PUBLIC_URL``, and never with the Host header
of whichever request happened to cause them (a proxy's internal name, or a forged one)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from django.conf import settings


def public_link(path: str) -> str:
    """The absolute link to ``path`` (an absolute path, as ``reverse()`` gives) on the public address."""
    if not path.startswith("/"):
        raise ValueError(f"a public link needs an absolute path, not {path!r}")
    return f"{settings.OTB_PUBLIC_URL}{path}"


def public_link_rebased(url: str) -> str:
    """``url`` (an absolute URL built from a request, as DRF's page links are) moved onto the public
    address: its path, query and fragment are kept, its scheme and host replaced."""
    parts = urlsplit(url)
    public = urlsplit(settings.OTB_PUBLIC_URL)
    return urlunsplit((public.scheme, public.netloc, parts.path or "/", parts.query, parts.fragment))
