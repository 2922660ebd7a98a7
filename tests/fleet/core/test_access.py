"""The actor and the one authorisation entry point (fleet.core.access): who passes ``authorize``,
``authorize_staff`` and ``authorize_self``, with which error, and what ``Actor.from_request`` keeps."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import RequestFactory
from rest_framework.request import Request

from fleet.core.access import (
    authorize,
    authorize_self,
    authorize_staff,
    box_visible,
    organization_visible,
)
from fleet.core.audit import Actor
from fleet.core.authentication import AgentPrincipal
from fleet.core.choices import Role
from fleet.core.errors import Forbidden, NotFound
from fleet.core.models import ApiToken, Membership
from fleet.core.services import api_token_create

pytestmark = pytest.mark.django_db


def _token(user: Any, organization: Any) -> ApiToken:
    token, _ = api_token_create(actor=Actor.system("test"), user=user, organization=organization, name="t")
    return token


def _agent_actor(box: Any) -> Actor:
    request = RequestFactory().post("/api/v1/boxes/claim")
    request.user = AgentPrincipal(box=box, credential_id=None)  # type: ignore[assignment]
    return Actor.from_request(request)


def test_the_system_passes_everything(people: Any) -> None:
    # given the trusted internal actor
    system = Actor.system("test")
    # then it passes as owner, as staff and for anyone's objects
    assert system.trusted
    assert authorize(system, organization_id=people.org.pk, minimum=Role.OWNER) == Role.OWNER
    assert authorize(system, organization_id=None, minimum=Role.OWNER) == Role.OWNER
    authorize_staff(system)
    authorize_self(system, user_id=people.owner.pk, not_found="token not found")


@pytest.mark.parametrize(
    ("who", "minimum", "expected"),
    [
        ("viewer", Role.VIEWER, Role.VIEWER),
        ("viewer", Role.ADMIN, Forbidden),
        ("admin", Role.ADMIN, Role.ADMIN),
        ("admin", Role.OWNER, Forbidden),
        ("owner", Role.OWNER, Role.OWNER),
        ("outsider", Role.VIEWER, NotFound),
        ("staff", Role.OWNER, Role.OWNER),
    ],
)
def test_a_person_is_judged_by_their_role(people: Any, who: str, minimum: Role, expected: Any) -> None:
    # given a person acting in Acme
    actor = Actor.for_user(people.by_role(who))
    # when authorised for the minimum role
    if isinstance(expected, str):
        assert authorize(actor, organization_id=people.org.pk, minimum=minimum) == expected
        return
    with pytest.raises(expected) as raised:
        authorize(actor, organization_id=people.org.pk, minimum=minimum)
    # then the refusal says what it said at the edges
    if expected is Forbidden:
        assert raised.value.message == f"this needs the {minimum} role or higher; you are {who}"
    else:
        assert raised.value.message == "organization not found"


def test_a_personal_api_token_narrows_its_person_to_its_organisation(people: Any) -> None:
    # given the owner of Acme is also a member of Globex, and calls with a token for Globex
    Membership.objects.create(user=people.owner, organization=people.other_org, role=Role.VIEWER)
    actor = Actor.for_user(people.owner, token=_token(people.owner, people.other_org))
    # then Acme is invisible through it, and in Globex the token's role counts
    with pytest.raises(NotFound):
        authorize(actor, organization_id=people.org.pk, minimum=Role.VIEWER)
    with pytest.raises(Forbidden):
        authorize(actor, organization_id=people.other_org.pk, minimum=Role.ADMIN)
    assert authorize(actor, organization_id=people.other_org.pk, minimum=Role.VIEWER) == Role.VIEWER


def test_staff_with_a_personal_api_token_act_with_their_role_in_its_organisation(people: Any) -> None:
    # given a staff user who is a viewer of Acme and calls with a token for Acme
    Membership.objects.create(user=people.staff, organization=people.org, role=Role.VIEWER)
    actor = Actor.for_user(people.staff, token=_token(people.staff, people.org))
    # then in Acme they are a viewer (as ``require_role`` always said), elsewhere staff
    with pytest.raises(Forbidden):
        authorize(actor, organization_id=people.org.pk, minimum=Role.ADMIN)
    assert authorize(actor, organization_id=people.other_org.pk, minimum=Role.OWNER) == Role.OWNER
    # and they may not act for someone else with it
    with pytest.raises(NotFound):
        authorize_self(actor, user_id=people.owner.pk, not_found="token not found")


def test_machines_and_nobody_are_refused(people: Any, claimed_box_factory: Any) -> None:
    # given an agent principal, a box label and an anonymous actor
    box = claimed_box_factory(people.org)
    for actor in (_agent_actor(box), Actor(label=f"box:{box.serial}"), Actor(label="anonymous")):
        assert not actor.trusted and actor.user is None
        # then nothing a person does is theirs to do, even in the box's own organisation
        with pytest.raises(Forbidden):
            authorize(actor, organization_id=people.org.pk, minimum=Role.VIEWER)
        with pytest.raises(Forbidden):
            authorize_staff(actor)
        with pytest.raises(Forbidden):
            authorize_self(actor, user_id=people.owner.pk, not_found="token not found")


def test_no_organisation_is_not_found_for_a_person_and_fine_for_staff(people: Any) -> None:
    with pytest.raises(NotFound):
        authorize(Actor.for_user(people.owner), organization_id=None, minimum=Role.VIEWER)
    assert authorize(Actor.for_user(people.staff), organization_id=None, minimum=Role.ADMIN) == Role.OWNER


def test_authorize_staff_refuses_customers(people: Any) -> None:
    for who in ("viewer", "admin", "owner", "outsider"):
        with pytest.raises(Forbidden) as raised:
            authorize_staff(Actor.for_user(people.by_role(who)))
        assert raised.value.message == "support staff only"
    authorize_staff(Actor.for_user(people.staff))


def test_authorize_self_is_the_person_or_staff(people: Any) -> None:
    authorize_self(Actor.for_user(people.owner), user_id=people.owner.pk, not_found="token not found")
    authorize_self(Actor.for_user(people.staff), user_id=people.owner.pk, not_found="token not found")
    with pytest.raises(NotFound) as raised:
        authorize_self(Actor.for_user(people.admin), user_id=people.owner.pk, not_found="token not found")
    assert raised.value.message == "token not found"


def test_from_request_keeps_the_personal_api_token(people: Any) -> None:
    # given a DRF request authenticated with a personal API token
    token = _token(people.admin, people.org)
    request = Request(RequestFactory().get("/api/v1/me", REMOTE_ADDR="192.0.2.7"))
    request.user, request.auth = people.admin, token
    # when the actor is built
    actor = Actor.from_request(request)
    # then it carries the person, the token and the address, and is not trusted
    assert (actor.user, actor.token, actor.source_ip) == (people.admin, token, "192.0.2.7")
    assert actor.label == "user:admin@example.com" and not actor.trusted
    # and a session (no token) gives none
    session = RequestFactory().get("/boxes/")
    session.user = people.admin
    assert Actor.from_request(session).token is None


def test_an_agent_request_gives_an_untrusted_labelled_actor(people: Any, claimed_box_factory: Any) -> None:
    box = claimed_box_factory(people.org)
    actor = _agent_actor(box)
    assert actor.label == f"box:{box.serial}" and actor.user is None and not actor.trusted


def test_edges_resolve_visibility_only(people: Any, claimed_box_factory: Any) -> None:
    # given a box of Acme
    box = claimed_box_factory(people.org)
    # then a viewer sees it and Acme (the role is the service's question), an outsider does not
    viewer = Actor.for_user(people.viewer)
    assert box_visible(viewer, box.pk) == box
    assert organization_visible(viewer, people.org.pk) == people.org
    with pytest.raises(NotFound):
        box_visible(Actor.for_user(people.outsider), box.pk)
    with pytest.raises(NotFound):
        organization_visible(Actor.for_user(people.outsider), people.org.pk)
