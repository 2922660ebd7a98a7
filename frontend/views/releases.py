"""The console's firmware releases (staff): list, add a release with its image, sign it with the
service's key or give a detached signature, publish, withdraw. Every change is one service of
``fleet.firmware.services``, the same the API and ``manage.py sign_firmware`` call."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from fleet.core.audit import Actor
from fleet.firmware import selectors as firmware_selectors
from fleet.firmware import services as firmware_services
from fleet.firmware.choices import ReleaseState
from frontend.errors import errors_as_message, errors_on_form, page_errors
from frontend.forms import ReleaseForm, ReleaseSignatureForm, ReleaseWithdrawForm
from frontend.uploads import limit_uploads
from frontend.views.console import staff_required

# Room for the form's other fields and the signature file next to the image itself (the service
# checks the image's own size exactly).
UPLOAD_SLACK_BYTES = 1 << 20


def _limit_mb() -> str:
    return f"{firmware_services.image_size_limit() / 1e6:,.0f} MB"


def _releases_page(request: HttpRequest, form: ReleaseForm, status: int = 200) -> HttpResponse:
    releases = list(firmware_selectors.releases_list(include_unpublished=True).select_related("created_by"))
    return render(
        request,
        "frontend/console/releases.html",
        {
            "nav": "console",
            "releases": releases,
            "form": form,
            "limit": _limit_mb(),
            "can_sign": firmware_services.signing_key_configured(),
        },
        status=status,
    )


@csrf_exempt
@staff_required
def release_list(request: HttpRequest) -> HttpResponse:
    """Every release, and the form adding one. The image streams to a temporary file while it
    arrives (never whole in memory) and the upload stops past the size limit."""
    guard = limit_uploads(request, firmware_services.image_size_limit() + UPLOAD_SLACK_BYTES)
    return _release_list(request, guard)


@csrf_protect
@page_errors
def _release_list(request: HttpRequest, guard: Any) -> HttpResponse:
    if request.method != "POST":
        return _releases_page(request, ReleaseForm())
    form = ReleaseForm(request.POST, request.FILES)
    if guard.exceeded:
        form.is_valid()
        form.errors.pop("image", None)
        form.add_error("image", f"The image is larger than the limit of {_limit_mb()}.")
    elif form.is_valid():
        data = form.cleaned_data
        with errors_on_form(form):
            release = firmware_services.release_add(
                actor=Actor.from_request(request),
                version=data["version"].strip(),
                hardware_models=data["hardware_models"],
                channel=data["channel"],
                notes=data["notes"],
                signature=data["signature"],
                upload=data["image"],
            )
            messages.success(request, f"Release {release.version} added as a draft.")
            return redirect("frontend:release", release_id=release.pk)
    return _releases_page(request, form, status=400)


def _release_page(
    request: HttpRequest,
    release: Any,
    *,
    signature_form: Any = None,
    withdraw_form: Any = None,
    status: int = 200,
) -> HttpResponse:
    return render(
        request,
        "frontend/console/release.html",
        {
            "nav": "console",
            "release": release,
            "rollouts": list(release.rollouts.order_by("-created_at")[:20]),
            "can_sign": firmware_services.signing_key_configured(),
            "signature_form": signature_form or ReleaseSignatureForm(),
            "withdraw_form": withdraw_form or ReleaseWithdrawForm(),
            "is_draft": release.state == ReleaseState.DRAFT,
            "is_published": release.state == ReleaseState.PUBLISHED,
        },
        status=status,
    )


@staff_required
@page_errors
def release_detail(request: HttpRequest, release_id: str) -> HttpResponse:
    """One release: its image's size, SHA-256 and signature, its state and its rollouts."""
    return _release_page(request, firmware_selectors.release_get(release_id=release_id))


@staff_required
@page_errors
def release_action(request: HttpRequest, release_id: str, action: str) -> HttpResponse:
    """Sign with the service's key, set a detached signature, publish or withdraw (POST)."""
    if request.method != "POST":
        return redirect("frontend:release", release_id=release_id)
    release = firmware_selectors.release_get(release_id=release_id)
    actor = Actor.from_request(request)
    if action == "signature":
        form = ReleaseSignatureForm(request.POST, request.FILES)
        if form.is_valid():
            with errors_on_form(form):
                firmware_services.release_update(
                    actor=actor, release=release, signature=form.signature_value()
                )
                messages.success(request, "Signature stored.")
                return redirect("frontend:release", release_id=release.pk)
        return _release_page(request, release, signature_form=form, status=400)
    if action == "withdraw":
        withdraw_form = ReleaseWithdrawForm(request.POST)
        if withdraw_form.is_valid():
            with errors_on_form(withdraw_form):
                firmware_services.release_withdraw(
                    actor=actor, release=release, reason=withdraw_form.cleaned_data["reason"]
                )
                messages.success(request, f"Release {release.version} withdrawn; its rollouts are aborted.")
                return redirect("frontend:release", release_id=release.pk)
        return _release_page(request, release, withdraw_form=withdraw_form, status=400)
    if action == "sign":
        with errors_as_message(request):
            firmware_services.release_sign(actor=actor, release=release)
            messages.success(request, "Signed with the service's key.")
    elif action == "publish":
        with errors_as_message(request):
            firmware_services.release_publish(actor=actor, release=release)
            messages.success(request, f"Release {release.version} published: new rollouts can send it.")
    else:
        raise Http404("unknown action")
    return redirect("frontend:release", release_id=release.pk)
