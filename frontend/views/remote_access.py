"""Remote access on the box page of a stock OverTheBox box: admins ask for a session, owners approve it
(or anyone allowed rejects or closes it); everything calls ``fleet.commands.remote_access``, as the API."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from fleet.commands.models import RemoteAccess
from fleet.commands.remote_access import (
    remote_access_approve,
    remote_access_close,
    remote_access_get_for_box,
    remote_access_list_for_box,
    remote_access_reject,
    remote_access_request,
)
from fleet.core.access import box_visible, organization_role
from fleet.core.audit import Actor
from fleet.core.choices import BoxProtocol, Role
from fleet.core.models import Box
from frontend.errors import errors_on_form, form_error_summary, page_errors
from frontend.forms import RemoteAccessActionForm, RemoteAccessRequestForm

SHOWN = 10


def remote_access_context(request: HttpRequest, box: Box) -> dict[str, Any]:
    """What the box page's remote access section shows (stock OverTheBox boxes only)."""
    if box.protocol != BoxProtocol.OTB:
        return {"remote_access_shown": False}
    accesses: list[RemoteAccess] = list(remote_access_list_for_box(box_id=box.pk)[:SHOWN])
    is_owner = bool(
        box.organization_id and organization_role(request.user, box.organization_id) == Role.OWNER
    )
    return {
        "remote_access_shown": True,
        "remote_accesses": accesses,
        "remote_access_form": RemoteAccessRequestForm(),
        "remote_access_is_owner": is_owner,
    }


def _back(box: Box) -> HttpResponse:
    return redirect(f"{reverse('frontend:box', args=[box.pk])}#remote-access")


@login_required
@require_POST
@page_errors
def remote_access_ask(request: HttpRequest, box_id: str) -> HttpResponse:
    """Ask for a session (admin and up); it waits for an owner's approval."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    form = RemoteAccessRequestForm(request.POST)
    if form.is_valid():
        with errors_on_form(form):
            remote_access_request(
                actor=actor,
                box=box,
                exposed_port=form.cleaned_data["exposed_port"],
                public_key=form.cleaned_data["public_key"],
                duration_s=form.cleaned_data["hours"] * 3600,
            )
    if form.errors:
        messages.error(request, "Not asked. " + form_error_summary(form))
    else:
        messages.success(request, "Remote access asked for: an owner of the organisation must approve it.")
    return _back(box)


ACTIONS = {
    "approve": (remote_access_approve, "Approved: the box opens the session to the bastion."),
    "reject": (remote_access_reject, "Request rejected."),
    "close": (remote_access_close, "Closed: the box is told to disconnect."),
}


@login_required
@require_POST
@page_errors
def remote_access_action(
    request: HttpRequest, box_id: str, remote_access_id: str, action: str
) -> HttpResponse:
    """Approve (an owner, once the confirmation is ticked), reject or close a remote access."""
    actor = Actor.from_request(request)
    box = box_visible(actor, box_id)
    access = remote_access_get_for_box(box_id=box.pk, remote_access_id=remote_access_id)
    if action not in ACTIONS:
        raise Http404("unknown remote access action")
    service, done = ACTIONS[action]
    form = RemoteAccessActionForm(request.POST, action=action)
    if form.is_valid():
        with errors_on_form(form):
            service(actor=actor, access=access)
    if form.errors:
        messages.error(request, "Not done. " + form_error_summary(form))
    else:
        messages.success(request, done)
    return _back(box)
