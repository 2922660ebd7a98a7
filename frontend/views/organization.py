"""Organisation pages: members and invitations, personal API tokens, alert rules and targets. They act
in the portal's current organisation (``frontend.context``); the services decide on the role."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from fleet.core import selectors as fleet_selectors
from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import DomainError
from fleet.core.models import Membership
from fleet.core.services import (
    api_token_create,
    api_token_revoke,
    invitation_resend,
    invitation_revoke,
    member_invite,
    member_remove,
    member_set_role,
)
from fleet.monitoring import selectors as monitoring_selectors
from fleet.monitoring.choices import THRESHOLD_KINDS, AlertRuleKind
from fleet.monitoring.services import (
    alert_rule_create,
    alert_rule_delete,
    alert_rule_test_notify,
    alert_rule_update,
    notification_target_create,
    notification_target_delete,
)
from frontend import selectors
from frontend.context import PortalOrganization, current_organization
from frontend.errors import errors_as_message, errors_on_form, form_add_domain_error, page_errors
from frontend.forms import AlertRuleForm, ApiTokenForm, InviteForm, MemberRoleForm, NotificationTargetForm


def _portal(request: HttpRequest) -> PortalOrganization:
    portal = current_organization(request)
    if portal is None:
        raise Http404("no organisation")
    return portal


# -- members ---------------------------------------------------------------------------------------


@login_required
@page_errors
def members_page(request: HttpRequest) -> HttpResponse:
    """Members with their roles and pending invitations; owners invite, change roles, remove."""
    portal = _portal(request)
    organization = portal.organization
    form = InviteForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            with errors_on_form(form):
                invitation, _token = member_invite(
                    actor=Actor.from_request(request),
                    organization=organization,
                    email=form.cleaned_data["email"],
                    role=form.cleaned_data["role"],
                )
                messages.success(request, f"Invitation sent to {invitation.email}.")
                return redirect("frontend:members")
        status = 400
    members = list(fleet_selectors.members_of_organization(organization=organization))
    invitations = selectors.invitations_pending(organization=organization)
    return render(
        request,
        "frontend/organization/members.html",
        {
            "nav": "members",
            "members": members,
            "invitations": invitations,
            "form": form,
            "is_owner": portal.is_owner,
            "role_choices": Role.choices,
        },
        status=status,
    )


@login_required
@require_POST
@page_errors
def invitation_action(request: HttpRequest, invitation_id: str, action: str) -> HttpResponse:
    """Re-send a pending invitation (a new link; the old one stops working) or revoke it (owners)."""
    invitation = selectors.invitation_pending_get(
        organization=_portal(request).organization, invitation_id=invitation_id
    )
    actor = Actor.from_request(request)
    with errors_as_message(request):
        if action == "resend":
            invitation_resend(actor=actor, invitation=invitation)
            messages.success(
                request,
                f"Invitation sent again to {invitation.email}, valid for 7 days. The link sent before "
                "no longer works.",
            )
        elif action == "revoke":
            invitation_revoke(actor=actor, invitation=invitation)
            messages.success(
                request, f"The invitation to {invitation.email} is revoked: its link no longer works."
            )
        else:
            raise Http404("unknown action")
    return redirect("frontend:members")


def _membership(request: HttpRequest, membership_id: str) -> Membership:
    return fleet_selectors.membership_get(
        organization=_portal(request).organization, membership_id=membership_id
    )


@login_required
@require_POST
@page_errors
def member_role_update(request: HttpRequest, membership_id: str) -> HttpResponse:
    membership = _membership(request, membership_id)
    form = MemberRoleForm(request.POST)
    with errors_as_message(request):
        if not form.is_valid():
            raise DomainError("Choose a role from the list.", field="role")
        member_set_role(
            actor=Actor.from_request(request), membership=membership, role=form.cleaned_data["role"]
        )
        messages.success(request, f"{membership.user.get_username()} is now {form.cleaned_data['role']}.")
    return redirect("frontend:members")


@login_required
@require_POST
@page_errors
def member_delete(request: HttpRequest, membership_id: str) -> HttpResponse:
    membership = _membership(request, membership_id)
    with errors_as_message(request):
        member_remove(actor=Actor.from_request(request), membership=membership)
        messages.success(request, f"{membership.user.get_username()} was removed.")
    return redirect("frontend:members")


# -- personal API tokens ---------------------------------------------------------------------------


@login_required
@page_errors
def tokens_page(request: HttpRequest) -> HttpResponse:
    """The person's API tokens for the current organisation; a new token is shown exactly once."""
    portal = _portal(request)
    form = ApiTokenForm(request.POST or None)
    created_value = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                _token, created_value = api_token_create(
                    actor=Actor.from_request(request),
                    user=request.user,
                    organization=portal.organization,
                    name=form.cleaned_data["name"],
                    expires_in_days=form.cleaned_data["expires_in_days"],
                )
            except DomainError as exc:
                form_add_domain_error(form, exc)
            else:
                form = ApiTokenForm()
        if form.errors:
            status = 400
    tokens = [
        token
        for token in fleet_selectors.api_tokens_of_user(user=request.user)
        if token.organization_id == portal.organization.pk
    ]
    response = render(
        request,
        "frontend/organization/tokens.html",
        {"nav": "tokens", "form": form, "tokens": tokens, "created_value": created_value},
        status=status,
    )
    if created_value:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@page_errors
def token_revoke(request: HttpRequest, token_id: str) -> HttpResponse:
    token = fleet_selectors.api_token_of_user(user=request.user, token_id=token_id)
    api_token_revoke(actor=Actor.from_request(request), token=token)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("frontend:tokens")


# -- alerts ----------------------------------------------------------------------------------------


def _alert_forms(organization: Any, data: Any = None) -> tuple[AlertRuleForm, NotificationTargetForm]:
    rule_form = _rule_form(organization, data if data and data.get("form") == "rule" else None)
    target_form = NotificationTargetForm(data if data and data.get("form") == "target" else None)
    return rule_form, target_form


@login_required
@page_errors
def alerts_page(request: HttpRequest) -> HttpResponse:
    """Alert rules, where notifications go, and what is firing now."""

    portal = _portal(request)
    organization = portal.organization
    rule_form, target_form = _alert_forms(organization, request.POST if request.method == "POST" else None)
    status = 200
    if request.method == "POST":
        actor = Actor.from_request(request)
        form_name = request.POST.get("form")
        with errors_on_form(rule_form if form_name == "rule" else target_form):
            if form_name == "rule" and rule_form.is_valid():
                data = rule_form.cleaned_data
                alert_rule_create(
                    actor=actor,
                    organization=organization,
                    name=data["name"],
                    kind=data["kind"],
                    threshold=data["threshold"],
                    duration_minutes=data["duration_minutes"],
                    box=data["box"] or None,
                    target_ids=data["targets"],
                )
                messages.success(request, f"Alert rule “{data['name']}” created.")
                return redirect("frontend:alerts")
            if form_name == "target" and target_form.is_valid():
                data = target_form.cleaned_data
                _target, secret = notification_target_create(
                    actor=actor,
                    organization=organization,
                    name=data["name"],
                    kind=data["kind"],
                    email=data["email"] or None,
                    url=data["url"] or None,
                )
                if secret:
                    messages.warning(request, f"Webhook signing secret (shown once, keep it): {secret}")
                messages.success(request, f"Notification target “{data['name']}” added.")
                return redirect("frontend:alerts")
        status = 400
    rules = list(monitoring_selectors.alert_rule_list(organization_id=organization.pk))
    targets = list(monitoring_selectors.notification_target_list(organization_id=organization.pk))
    open_alerts = monitoring_selectors.alerts_open(organization_id=organization.pk)
    return render(
        request,
        "frontend/organization/alerts.html",
        {
            "nav": "alerts",
            "rule_form": rule_form,
            "target_form": target_form,
            "rules": rules,
            "targets": targets,
            "open_alerts": open_alerts,
            "can_edit": portal.can_edit,
        },
        status=status,
    )


def _rule_form(organization: Any, data: Any = None, *, rule: Any = None) -> AlertRuleForm:
    targets = monitoring_selectors.notification_target_list(organization_id=organization.pk)
    initial = (
        {
            "name": rule.name,
            "threshold": rule.threshold,
            "duration_minutes": rule.duration_minutes,
            "box": str(rule.box_id or ""),
            "targets": [str(target.pk) for target in rule.targets.all()],
        }
        if rule is not None
        else None
    )
    return AlertRuleForm(
        data,
        initial=initial,
        editing=rule is not None,
        kinds=AlertRuleKind.choices,
        boxes=selectors.box_choices(organization=organization),
        targets=[(str(target.pk), target.name) for target in targets],
    )


@login_required
@page_errors
def alert_rule_edit(request: HttpRequest, rule_id: str) -> HttpResponse:
    """Change a rule: its name, threshold, duration, box and targets (its kind is fixed); a test
    notification goes to its targets from here too."""
    portal = _portal(request)
    organization = portal.organization
    rule = monitoring_selectors.alert_rule_get(organization_id=organization.pk, rule_id=rule_id)
    form = _rule_form(organization, request.POST or None, rule=rule)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            with errors_on_form(form):
                alert_rule_update(
                    actor=Actor.from_request(request),
                    rule=rule,
                    name=data["name"],
                    threshold=data["threshold"] if rule.kind in THRESHOLD_KINDS else None,
                    duration_minutes=data["duration_minutes"],
                    box=data["box"] or None,
                    target_ids=data["targets"],
                )
                messages.success(request, f"Alert rule “{data['name']}” saved.")
                return redirect("frontend:alerts")
        status = 400
    return render(
        request,
        "frontend/organization/alert_rule.html",
        {
            "nav": "alerts",
            "rule": rule,
            "form": form,
            "has_threshold": rule.kind in THRESHOLD_KINDS,
            "can_edit": portal.can_edit,
        },
        status=status,
    )


def _test_notification_report(request: HttpRequest, rule: Any, results: list[Any]) -> None:
    """One message per test: each target, and what happened, in words."""
    parts = [f"{result.target} ({result.kind}): {result.detail}." for result in results]
    text = f"Test notification of “{rule.name}”. " + " ".join(parts)
    if all(result.sent for result in results):
        messages.success(request, text)
    else:
        messages.warning(request, text)


@login_required
@require_POST
@page_errors
def alert_object_action(request: HttpRequest, kind: str, object_id: str, action: str) -> HttpResponse:
    """Enable, disable, test or delete a rule; delete a target."""

    organization = _portal(request).organization
    actor = Actor.from_request(request)
    # Looked up before acting: an unknown rule or target is a 404 (page_errors), not a message.
    if kind == "rule" and action in {"delete", "enable", "disable", "test"}:
        rule = monitoring_selectors.alert_rule_get(organization_id=organization.pk, rule_id=object_id)
    elif kind == "target" and action == "delete":
        target = monitoring_selectors.notification_target_get(
            organization_id=organization.pk, target_id=object_id
        )
    else:
        raise Http404("unknown action")
    with errors_as_message(request):
        if kind == "rule" and action == "test":
            _test_notification_report(request, rule, alert_rule_test_notify(actor=actor, rule=rule))
            return redirect("frontend:alert_rule", rule_id=rule.pk)
        if kind == "rule" and action == "delete":
            alert_rule_delete(actor=actor, rule=rule)
            messages.success(request, f"Alert rule “{rule.name}” deleted.")
        elif kind == "rule":
            alert_rule_update(actor=actor, rule=rule, enabled=action == "enable")
            state = "on" if action == "enable" else "off"
            messages.success(request, f"Alert rule “{rule.name}” is {state}.")
        else:
            notification_target_delete(actor=actor, target=target)
            messages.success(request, f"Notification target “{target.name}” deleted.")
    if kind == "rule" and action == "test":
        return redirect("frontend:alert_rule", rule_id=rule.pk)
    return redirect("frontend:alerts")
