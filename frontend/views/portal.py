"""The fleet page and claiming a box."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from fleet.core.access import is_staff
from fleet.core.audit import Actor
from fleet.core.errors import DomainError, RateLimited
from frontend import selectors
from frontend.context import current_organization
from frontend.errors import form_add_domain_error, page_errors
from frontend.forms import BoxClaimForm, FleetFilterForm
from otbcompat.binding import box_claim_with_device, device_claim

PAGE_SIZE = 50


def _no_organization(request: HttpRequest) -> HttpResponse:
    if is_staff(request.user):
        # support staff belong to no customer: their pages are the console's
        return redirect("frontend:console")
    return render(request, "frontend/no_organization.html", {"nav": "boxes"})


@login_required
@page_errors
def fleet_page(request: HttpRequest) -> HttpResponse:
    """Every box of the current organisation: status, links, firmware, server, public IP.

    One query for the page of boxes (joined and annotated by ``fleet.core.selectors``), one count, one
    for the region filter, whatever the fleet size. An htmx request gets only the table (and the
    filters' errors, swapped next to their fields out of band). A bad filter is said next to its
    field and no box is listed (the page would otherwise silently list every box); a bad page
    number shows the first page, with a note.
    """
    portal = current_organization(request)
    if portal is None:
        return _no_organization(request)
    form = FleetFilterForm(request.GET or None, regions=selectors.region_choices())
    filters: dict[str, object] = {"organization": str(portal.organization.pk)}
    boxes: Any = []
    page_number = 1
    if form.is_bound:
        form.is_valid()
    if not form.is_bound or not form.filter_errors():
        if form.is_bound:
            filters.update(form.box_filters())
            page_number = form.page_number()
        boxes = selectors.fleet_page_boxes(
            user=request.user, filters=filters, online=form.online() if form.is_bound else None
        )
    paginator = Paginator(boxes, PAGE_SIZE)
    page = paginator.get_page(page_number)
    page_error = form.page_error() if form.is_bound else ""
    if not page_error and page.number != page_number:
        page_error = f"There is no page {page_number}: showing page {page.number}, the last one."
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "nav": "boxes",
        "form": form,
        "page": page,
        "page_error": page_error,
        "boxes": list(page.object_list),
        "query": query.urlencode(),
        "filtered": any(request.GET.get(key) for key in ("q", "status", "region", "firmware")),
        "filter_errors": form.is_bound and form.filter_errors(),
    }
    status = 400 if context["filter_errors"] else 200
    if request.headers.get("HX-Request") and request.headers.get("HX-Target") == "fleet-results":
        return render(request, "frontend/fleet/_results.html", {**context, "oob": True}, status=status)
    return render(request, "frontend/fleet/list.html", context, status=status)


@login_required
@page_errors
def box_claim_page(request: HttpRequest) -> HttpResponse:
    """Claim a box with its serial and claim code, or a stock OverTheBox box by the device id it shows
    (admins and owners)."""
    portal = current_organization(request)
    if portal is None:
        return _no_organization(request)
    form = BoxClaimForm(request.POST or None)
    status_code = 200
    retry_after_s = 0
    if request.method == "POST":
        if form.is_valid():
            actor = Actor.from_request(request)
            device_id = form.cleaned_data["device_id"].strip()
            serial = form.cleaned_data["serial"].strip()
            try:
                if device_id and not serial:
                    claimed = device_claim(actor=actor, organization=portal.organization, device_id=device_id)
                else:
                    claimed = box_claim_with_device(
                        actor=actor,
                        organization=portal.organization,
                        serial=serial,
                        claim_code=form.cleaned_data["claim_code"].strip(),
                        device_id=device_id or None,
                    )
            except DomainError as exc:
                form_add_domain_error(form, exc)
                status_code = exc.status if exc.status != 404 else 400
                retry_after_s = exc.retry_after_s if isinstance(exc, RateLimited) else 0
            else:
                box = claimed.box
                if claimed.newly_claimed:
                    messages.success(request, f"Box {box.serial} is now part of {portal.organization.name}.")
                else:
                    messages.info(
                        request,
                        f"Box {box.serial} was already part of {portal.organization.name}: nothing changed.",
                    )
                return redirect("frontend:box", box_id=box.pk)
        else:
            status_code = 400
    response = render(
        request,
        "frontend/fleet/claim.html",
        {"nav": "claim", "form": form, "can_edit": portal.can_edit},
        status=status_code,
    )
    if retry_after_s:
        response["Retry-After"] = str(retry_after_s)
    return response
