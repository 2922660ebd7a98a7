"""Signing in and out, password reset, the organisation switcher and accepting an invitation."""

from __future__ import annotations

import logging
from typing import Any, cast

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import NON_FIELD_ERRORS
from django.forms.utils import ErrorDict
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from fleet.core.access import organization_for
from fleet.core.choices import Role
from fleet.core.errors import DomainError
from fleet.core.services import invitation_accept, invitation_sign_up
from fleet.core.throttling import login_failed, login_refusal, login_succeeded
from frontend.context import current_organization, organization_choose
from frontend.errors import form_add_domain_error, page_errors
from frontend.forms import InvitationAcceptForm, InvitationSignUpForm, SignInForm

logger = logging.getLogger(__name__)


class ThrottledLoginMixin:
    """Brute-force protection for a sign-in view (the rules are ``fleet.core.throttling``'s): over the
    limit the attempt is answered 429 *before* the password is checked, so it neither costs a
    password hash nor tells anything."""

    @staticmethod
    def _attempt(request: HttpRequest) -> dict[str, str]:
        return {
            "username": str(request.POST.get("username") or ""),
            "source": str(request.META.get("REMOTE_ADDR") or ""),
        }

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        view: Any = self
        refusal = login_refusal(**self._attempt(request))
        if refusal is not None:
            form = view.get_form()
            # set the errors directly: asking the form for them would check the password
            form._errors = ErrorDict()
            form._errors[NON_FIELD_ERRORS] = form.error_class([refusal], error_class="nonfield")
            form.cleaned_data = {}
            logger.warning("sign-in refused: too many failures")
            return view.render_to_response(view.get_context_data(form=form), status=429)
        return cast(HttpResponse, super().post(request, *args, **kwargs))  # type: ignore[misc]

    def form_invalid(self, form: Any) -> HttpResponse:
        incomplete = getattr(form, "incomplete", None)
        if not (callable(incomplete) and incomplete()):
            login_failed(**self._attempt(cast(Any, self).request))
        return cast(HttpResponse, super().form_invalid(form))  # type: ignore[misc]

    def form_valid(self, form: Any) -> HttpResponse:
        login_succeeded(**self._attempt(cast(Any, self).request))
        return cast(HttpResponse, super().form_valid(form))  # type: ignore[misc]


class LoginView(ThrottledLoginMixin, auth_views.LoginView):
    template_name = "frontend/auth/login.html"
    authentication_form = SignInForm
    redirect_authenticated_user = True


class AdminLoginView(ThrottledLoginMixin, auth_views.LoginView):
    """The Django admin's sign-in page with the same protection (staff accounts are the most
    valuable ones to guess)."""

    template_name = "admin/login.html"
    authentication_form = AdminAuthenticationForm

    def get_default_redirect_url(self) -> str:
        return reverse("admin:index")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context.update(
            admin.site.each_context(self.request),
            title="Log in",
            site_header=admin.site.site_header,
            app_path=self.request.get_full_path(),
        )
        return context


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset, with the emailed link on the public address (OTB_PUBLIC_URL) instead of the
    requesting Host header (a forged Host would otherwise mail a link to someone else's site)."""

    @property
    def extra_email_context(self) -> dict[str, str]:  # type: ignore[override]
        return {"public_url": settings.OTB_PUBLIC_URL}


login = LoginView.as_view()
admin_login = AdminLoginView.as_view()
logout = auth_views.LogoutView.as_view()
password_reset = PasswordResetView.as_view(
    template_name="frontend/auth/password_reset_form.html",
    email_template_name="frontend/auth/password_reset_email.txt",
    subject_template_name="frontend/auth/password_reset_subject.txt",
    success_url=reverse_lazy("frontend:password_reset_done"),
)
password_reset_done = auth_views.PasswordResetDoneView.as_view(
    template_name="frontend/auth/password_reset_done.html"
)
password_reset_confirm = auth_views.PasswordResetConfirmView.as_view(
    template_name="frontend/auth/password_reset_confirm.html",
    success_url=reverse_lazy("frontend:password_reset_complete"),
)
password_reset_complete = auth_views.PasswordResetCompleteView.as_view(
    template_name="frontend/auth/password_reset_complete.html"
)


def home(request: HttpRequest) -> HttpResponse:
    """``/``: the fleet page for people, the sign-in page for everyone else."""
    if not request.user.is_authenticated:
        return redirect(f"{reverse('frontend:login')}?next=/")
    if current_organization(request) is None and request.user.is_staff:
        return redirect("frontend:console")
    return redirect("frontend:boxes")


@login_required
@require_POST
@page_errors
def organization_switch(request: HttpRequest) -> HttpResponse:
    """Make another organisation (one the person may read) the current one."""
    organization = organization_for(request.user, request.POST.get("organization", ""), Role.VIEWER)
    organization_choose(request, organization)
    target = request.POST.get("next") or reverse("frontend:boxes")
    if "/boxes/" in target and target.rstrip("/") != reverse("frontend:boxes").rstrip("/"):
        target = reverse("frontend:boxes")  # a box of the previous organisation would now be a 404
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = reverse("frontend:boxes")
    messages.success(request, f"Now viewing {organization.name}.")
    return redirect(target)


def invitation_accept_page(request: HttpRequest) -> HttpResponse:
    """Accept an invitation: signed in, join with the token; not signed in, create the account the
    invitation is addressed to (the password chosen here), then be signed in as a member.

    The invitation link carries the token after ``#`` (never sent to a server); the page's script
    copies it into the token field, which can also be pasted by hand."""
    signed_in = request.user.is_authenticated
    form: InvitationAcceptForm = (
        InvitationAcceptForm(request.POST or None)
        if signed_in
        else InvitationSignUpForm(request.POST or None)
    )
    if request.method == "POST" and form.is_valid():
        token = form.cleaned_data["token"]
        try:
            if signed_in:
                membership = invitation_accept(user=request.user, token=token)
            else:
                membership = invitation_sign_up(token=token, password=form.cleaned_data["password1"])
                auth_login(request, membership.user, backend=settings.AUTHENTICATION_BACKENDS[0])
        except DomainError as exc:
            form_add_domain_error(form, exc)
        else:
            organization_choose(request, membership.organization)
            role = Role(membership.role).label.lower()
            welcome = "Welcome! Your account is ready and you are signed in. " if not signed_in else ""
            messages.success(request, f"{welcome}You joined {membership.organization.name} as {role}.")
            return redirect("frontend:boxes")
    return render(
        request,
        "frontend/invitation_accept.html",
        {"form": form, "signed_in": signed_in},
        status=400 if form.errors else 200,
    )
