"""Organisations and their members (fleet.core.services.organizations): creation, invitations,
roles, the last owner, removal."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail

from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.errors import Conflict, Forbidden
from fleet.core.models import ApiToken, AuditLog, Invitation, Membership
from fleet.core.services import (
    invitation_accept,
    member_invite,
    member_remove,
    member_set_role,
    organization_create,
)
from fleet.core.tokens import digest

pytestmark = pytest.mark.django_db


def test_organization_create_makes_the_owner_user_when_missing(system_actor: Actor) -> None:
    # given no user with that email
    # when
    organization = organization_create(
        actor=system_actor, name="Initech", owner_email="Boss@Initech.COM", owner_password="pw-12345678"
    )
    # then
    owner = get_user_model().objects.get(email="Boss@initech.com")
    assert owner.check_password("pw-12345678")
    assert Membership.objects.get(organization=organization).role == Role.OWNER
    assert AuditLog.objects.filter(action="organization.create", organization=organization).count() == 1


def test_organization_create_refuses_a_duplicate_name(system_actor: Actor, people: Any) -> None:
    with pytest.raises(Conflict) as exc:
        organization_create(actor=system_actor, name="acme", owner_email="x@example.com")
    assert exc.value.field == "name"


def test_member_invite_mails_a_token_that_is_stored_hashed(
    people: Any, user_factory: Any, django_capture_on_commit_callbacks: Any
) -> None:
    # given an owner
    actor = Actor.for_user(people.owner)
    # when they invite someone, committing the transaction so the mail is sent
    with django_capture_on_commit_callbacks(execute=True):
        invitation, token = member_invite(
            actor=actor, organization=people.org, email="new@example.com", role="admin"
        )
    # then the mail carries the token and only its digest is stored
    assert len(mail.outbox) == 1 and token in mail.outbox[0].body
    assert invitation.token_hash == digest(token)
    # and the invited user can accept it once
    newcomer = user_factory("new@example.com")
    membership = invitation_accept(user=newcomer, token=token)
    assert membership.role == Role.ADMIN
    with pytest.raises(Conflict):
        invitation_accept(user=newcomer, token=token)


def test_member_invite_is_owner_only(people: Any) -> None:
    with pytest.raises(Forbidden):
        member_invite(
            actor=Actor.for_user(people.admin), organization=people.org, email="a@b.example", role="viewer"
        )
    assert Invitation.objects.count() == 0


def test_invitation_for_another_email_is_refused(people: Any, user_factory: Any) -> None:
    _, token = member_invite(
        actor=Actor.for_user(people.owner), organization=people.org, email="a@example.com", role="viewer"
    )
    with pytest.raises(Forbidden):
        invitation_accept(user=user_factory("b@example.com"), token=token)


def test_last_owner_can_be_neither_demoted_nor_removed(people: Any) -> None:
    # given the only owner of the organisation
    owner_membership = Membership.objects.get(user=people.owner, organization=people.org)
    actor = Actor.for_user(people.owner)
    # when / then
    with pytest.raises(Conflict):
        member_set_role(actor=actor, membership=owner_membership, role="admin")
    with pytest.raises(Conflict):
        member_remove(actor=actor, membership=owner_membership)
    # but with a second owner, demotion works
    admin_membership = Membership.objects.get(user=people.admin, organization=people.org)
    member_set_role(actor=actor, membership=admin_membership, role="owner")
    member_set_role(actor=actor, membership=owner_membership, role="viewer")
    assert Membership.objects.get(pk=owner_membership.pk).role == Role.VIEWER


def test_member_remove_revokes_their_tokens(people: Any, api_token_factory: Any) -> None:
    api_token_factory(people.viewer, people.org)
    membership = Membership.objects.get(user=people.viewer, organization=people.org)
    member_remove(actor=Actor.for_user(people.owner), membership=membership)
    assert not ApiToken.objects.filter(user=people.viewer, revoked_at__isnull=True).exists()
