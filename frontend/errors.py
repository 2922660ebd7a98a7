"""How page views show domain errors: a field error on the form, a 404 page, a 403 page, or a page
with the service's message.

Services raise ``fleet.core.errors``; the API turns them into JSON (``fleet.core.api_errors``), the pages into
what a person sees. Objects the person may not see are 404, exactly as in the API.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from fleet.core.errors import DomainError, Forbidden, NotFound

# A service refusing the person (``fleet.core.access``: not theirs to see, or a role too low) is
# answered with a page of its own by ``page_errors`` (404/403), never as a message on a form.
REFUSALS = (Forbidden, NotFound)


def sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a final full stop (services' messages are
    written for people already; this keeps the form of the few that are not)."""
    text = (text or "").strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else f"{text}."


def form_add_domain_error(form: forms.Form, exc: DomainError) -> None:
    """Attach the error to the field it is about: the form's ``domain_field`` maps the service's
    field name to one of its fields (the form as a whole otherwise)."""
    domain_field = getattr(form, "domain_field", None)
    field = domain_field(exc.field) if callable(domain_field) else exc.field
    form.add_error(field if field in form.fields else None, sentence(exc.message))


def form_error_summary(form: forms.Form) -> str:
    """Every error of the form in one text, each after its field's label ("Name: ..."), for a page
    that can only show a message (a form posted without script, answered by a redirect)."""
    parts = []
    for name, errors in form.errors.items():
        label = form.fields[name].label if name in form.fields else ""
        for error in errors:
            parts.append(f"{label}: {error}" if label else str(error))
    return " ".join(parts)


@contextmanager
def errors_on_form(form: forms.Form) -> Iterator[None]:
    """Run a service for a form: what it refuses becomes an error on the field it names (the rest of
    the block is skipped); a refusal of the person (REFUSALS) goes through to ``page_errors``."""
    try:
        yield
    except REFUSALS:
        raise
    except DomainError as exc:
        form_add_domain_error(form, exc)


@contextmanager
def errors_as_message(request: HttpRequest) -> Iterator[None]:
    """As ``errors_on_form``, for an action without a form: the refusal is shown as a message."""
    try:
        yield
    except REFUSALS:
        raise
    except DomainError as exc:
        messages.error(request, sentence(exc.message))


def page_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Turn NotFound into a 404 and Forbidden into a 403 page for a view that does not handle them,
    and any other domain error into a page saying it, with its status (a backup no configured key
    opens: 409), never a 500."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from exc
        except Forbidden as exc:
            raise PermissionDenied(exc.message) from exc
        except DomainError as exc:
            context = {"message": sentence(exc.message)}
            return render(request, "frontend/domain_error.html", context, status=exc.status)

    return wrapper
