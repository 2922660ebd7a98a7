"""Bad input never gives a 500 nor writes anything: malformed JSON, wrong types, unknown fields, huge
bodies, non-ASCII or overlong serials, wrong content types - against enroll, claim, WAN policy,
config applied, API tokens, enrollment tokens and invitations. Each answer is a 4xx in the common
error shape, naming the field when there is one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from fleet.core.models import AgentCredential, ApiToken, AuditLog, Box, EnrollmentToken, Invitation
from tests.conftest import CLAIM_CODE, FACTORY_SECRET
from tests.fleet.firmware.firmware_helpers import make_release

pytestmark = pytest.mark.django_db

TWO_MB = 2 * 1024 * 1024


@pytest.fixture
def targets(
    people: Any, box_factory: Any, claimed_box_factory: Any, agent_token_factory: Any, client_for: Any
) -> dict[str, Any]:
    """name -> (client, url, a valid body) for each write endpoint under test."""
    box = claimed_box_factory(people.org)
    unclaimed = box_factory()
    agent = APIClient(HTTP_AUTHORIZATION=f"Bearer {agent_token_factory(box)}")
    owner = client_for(people.owner)
    return {
        "enroll": (
            APIClient(),
            "/api/v1/agent/enroll",
            {"serial": unclaimed.serial, "factory_secret": FACTORY_SECRET},
        ),
        "claim": (
            owner,
            "/api/v1/boxes/claim",
            {"serial": unclaimed.serial, "claim_code": CLAIM_CODE, "organization": str(people.org.pk)},
        ),
        "wan-policy": (
            owner,
            f"/api/v1/boxes/{box.pk}/wan-policy",
            {"mode": "aggregate", "interfaces": [{"name": "wan1", "kind": "fiber"}]},
        ),
        "applied": (agent, "/api/v1/agent/config/applied", {"config_hash": box.config_hash}),
        "tokens": (
            owner,
            "/api/v1/tokens/",
            {"name": "ci", "organization": str(people.org.pk), "expires_in_days": 5},
        ),
        "enrollment-tokens": (
            owner,
            f"/api/v1/organizations/{people.org.pk}/enrollment-tokens/",
            {"name": "batch", "expires_in_hours": 2, "single_use": True},
        ),
        "invitations": (
            owner,
            f"/api/v1/organizations/{people.org.pk}/invitations/",
            {"email": "new@example.com", "role": "viewer"},
        ),
    }


def method_of(name: str) -> str:
    return "put" if name == "wan-policy" else "post"


def counts() -> dict[str, Any]:
    box = Box.objects.order_by("serial").values_list(
        "serial", "state", "organization_id", "wan_policy", "name"
    )
    return {
        "boxes": list(box),
        "agent_credentials": AgentCredential.objects.count(),
        "api_tokens": ApiToken.objects.count(),
        "enrollment_tokens": EnrollmentToken.objects.count(),
        "invitations": Invitation.objects.count(),
        "audit": AuditLog.objects.count(),
        "applied": list(Box.objects.values_list("applied_config_hash", flat=True)),
    }


def send(
    client: APIClient, method: str, url: str, raw: bytes | str, content_type: str = "application/json"
) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    return getattr(client, method)(url, data=data, content_type=content_type)


TARGETS = ["enroll", "claim", "wan-policy", "applied", "tokens", "enrollment-tokens", "invitations"]


def assert_refused(response: Any, status: int | tuple[int, ...], before: dict[str, Any]) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.content[:300])
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert counts() == before
    return body["error"]


@pytest.mark.parametrize("name", TARGETS)
def test_the_valid_body_works(targets: dict[str, Any], name: str) -> None:
    """The control: the same endpoint accepts the well-formed body (so refusals below are about the input)."""
    client, url, body = targets[name]
    response = send(client, method_of(name), url, json.dumps(body))
    assert response.status_code in (200, 201), response.content


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize(
    "raw",
    ['{"serial": ', "not json", "", "[1, 2]", "null", '"text"', '{"a": NaN}', "[" * 50_000 + "]" * 50_000],
    ids=["truncated", "garbage", "empty", "array", "null", "string", "nan", "deeply-nested"],
)
def test_malformed_json_is_400(targets: dict[str, Any], name: str, raw: str) -> None:
    client, url, _ = targets[name]
    before = counts()
    error = assert_refused(send(client, method_of(name), url, raw), 400, before)
    assert error["code"] in {"malformed_body", "invalid"}


@pytest.mark.parametrize("name", TARGETS)
def test_unknown_fields_are_named(targets: dict[str, Any], name: str) -> None:
    client, url, body = targets[name]
    before = counts()
    response = send(client, method_of(name), url, json.dumps({**body, "is_admin": True}))
    error = assert_refused(response, 400, before)
    assert "is_admin" in error["fields"]


@pytest.mark.parametrize("name", TARGETS)
def test_huge_bodies_are_413(targets: dict[str, Any], name: str) -> None:
    client, url, body = targets[name]
    before = counts()
    padded = json.dumps({**body, "padding": "x" * TWO_MB})
    error = assert_refused(send(client, method_of(name), url, padded), 413, before)
    assert error["code"] == "too_large"


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/xml", "multipart/form-data"],
)
def test_wrong_content_types_are_415(targets: dict[str, Any], name: str, content_type: str) -> None:
    client, url, body = targets[name]
    before = counts()
    response = send(client, method_of(name), url, json.dumps(body), content_type=content_type)
    assert_refused(response, 415, before)


WRONG_TYPES = [
    ("enroll", "serial", 12345),
    ("enroll", "serial", None),
    ("enroll", "factory_secret", ["a", "b"]),
    ("enroll", "wg_public_key", "bm90LWEta2V5"),
    ("enroll", "mac", "zz:zz:zz:zz:zz:zz"),
    ("enroll", "factory_secret", "x" * 129),
    ("claim", "serial", {"$ne": ""}),
    ("claim", "claim_code", 1234),
    ("claim", "organization", "not-a-uuid"),
    ("claim", "organization", 7),
    ("wan-policy", "mode", 3),
    ("wan-policy", "mode", "turbo"),
    ("wan-policy", "interfaces", "eth0"),
    ("wan-policy", "interfaces", [{"name": 5}]),
    ("wan-policy", "interfaces", [{"name": "wan1", "up_kbps": "100"}]),
    ("wan-policy", "interfaces", [{"name": "wan1", "up_kbps": 1.5}]),
    ("wan-policy", "download_kbps", "20000"),
    ("wan-policy", "download_kbps", 0),
    ("wan-policy", "upload_kbps", True),
    ("wan-policy", "upload_kbps", 10_000_001),
    ("applied", "config_hash", 42),
    ("applied", "config_hash", "zz" * 32),
    ("applied", "error", {"message": "x"}),
    ("tokens", "expires_in_days", "30"),
    ("tokens", "expires_in_days", 400),
    ("tokens", "expires_in_days", True),
    ("tokens", "expires_in_days", 0),
    ("tokens", "name", ""),
    ("tokens", "organization", None),
    ("enrollment-tokens", "single_use", "yes"),
    ("enrollment-tokens", "expires_in_hours", -1),
    ("enrollment-tokens", "expires_in_hours", 2.5),
    ("invitations", "email", "not-an-email"),
    ("invitations", "role", "superuser"),
]


@pytest.mark.parametrize(("name", "field", "value"), WRONG_TYPES)
def test_wrong_types_and_values_name_the_field(
    targets: dict[str, Any], name: str, field: str, value: Any
) -> None:
    client, url, body = targets[name]
    before = counts()
    response = send(client, method_of(name), url, json.dumps({**body, field: value}))
    error = assert_refused(response, 400, before)
    assert any(
        key == field or key.startswith(f"{field}[") or key.startswith(f"{field}.") for key in error["fields"]
    ), error


@pytest.mark.parametrize("name", ["enroll", "claim"])
@pytest.mark.parametrize(
    "serial",
    [
        "BOX-É01",
        "箱-0001",
        "A" * 65,
        "",
        " ",
        "BOX 0001",
        "BOX\u00000001",
        "BOX-0001\n",
        "../../etc/passwd",
        "BOX;DROP",
    ],
    ids=["latin1", "cjk", "overlong", "empty", "blank", "space", "nul", "newline", "path", "semicolon"],
)
def test_bad_serials_are_400_naming_serial(targets: dict[str, Any], name: str, serial: str) -> None:
    client, url, body = targets[name]
    before = counts()
    response = send(client, method_of(name), url, json.dumps({**body, "serial": serial}))
    error = assert_refused(response, 400, before)
    assert "serial" in error["fields"]


def test_a_missing_required_field_is_named(targets: dict[str, Any]) -> None:
    client, url, _ = targets["claim"]
    before = counts()
    error = assert_refused(send(client, "post", url, json.dumps({"serial": "X-1"})), 400, before)
    assert "claim_code" in error["fields"]


def test_enroll_needs_exactly_one_credential(targets: dict[str, Any]) -> None:
    client, url, body = targets["enroll"]
    before = counts()
    for payload in ({"serial": body["serial"]}, {**body, "enrollment_token": "otbe_x"}):
        error = assert_refused(send(client, "post", url, json.dumps(payload)), 400, before)
        assert "factory_secret" in error["fields"]


@pytest.mark.parametrize(
    ("content_length", "status"),
    [
        ("104857601", 413),
        ("99999999999999999999", 413),
        ("ten", 400),
        ("-5", 400),
        ("1e6", 400),
        ("0x10", 400),
        ("", 411),
    ],
    ids=["over-cap", "huge", "word", "negative", "float", "hex", "missing"],
)
def test_speedtest_upload_sizes_are_refused_naming_content_length(
    targets: dict[str, Any], content_length: str, status: int
) -> None:
    """The upload is the one body read past the 1 MB limit (in chunks): its declared size is checked
    before any byte is read."""
    agent, _, _ = targets["applied"]
    before = counts()
    response = agent.post(
        "/api/v1/agent/speedtest",
        data=b"\0" * 16,
        content_type="application/octet-stream",
        CONTENT_LENGTH=content_length,
    )
    error = assert_refused(response, status, before)
    assert list(error["fields"]) == ["Content-Length"]


def test_a_speedtest_upload_over_the_json_limit_is_accepted_and_writes_nothing(
    targets: dict[str, Any],
) -> None:
    agent, _, _ = targets["applied"]
    before = counts()
    for content_type in ("application/octet-stream", "application/json", "text/plain"):
        response = agent.post("/api/v1/agent/speedtest", data=b"\0" * TWO_MB, content_type=content_type)
        assert response.status_code == 200, response.content
        assert response.json()["bytes"] == TWO_MB
    assert counts() == before


def test_speedtest_and_list_query_parameters_are_validated(
    targets: dict[str, Any], people: Any, client_for: Any
) -> None:
    agent, _, _ = targets["applied"]
    assert agent.get("/api/v1/agent/speedtest?bytes=999999999999").status_code == 400
    owner = client_for(people.owner)
    for query in ("organization=nope", "server=1", "drift=maybe", "state=on-fire", "limit=abc"):
        response = owner.get(f"/api/v1/boxes/?{query}")
        assert response.status_code == 400, query
    assert owner.get("/api/v1/boxes/not-a-uuid/").status_code == 404


def test_a_nul_byte_in_any_query_parameter_is_a_400_naming_it(
    client_for: Any, people: Any, claimed_box_factory: Any
) -> None:
    # given the list endpoints (staff sees them all) and a page
    box = claimed_box_factory(people.org)
    staff_client = client_for(people.staff)
    urls = [
        "/api/v1/audit/?actor=a%00b",
        "/api/v1/audit/?action=a%00b",
        "/api/v1/audit/?serial=a%00b",
        "/api/v1/audit/?q=a%00b",
        "/api/v1/boxes/?q=a%00b",
        f"/api/v1/boxes/{box.pk}/events/?kind=a%00b",
        f"/api/v1/boxes/{box.pk}/commands/?state=a%00b",
        "/api/v1/rollouts/?state=a%00b",
        "/api/v1/regions/?limit=1%00",
    ]
    for url in urls:
        # when a parameter holds a NUL character
        response = staff_client.get(url)
        # then the answer is a 400 in the error shape, naming the parameter
        assert response.status_code == 400, (url, response.status_code)
        name = url.split("?")[1].split("=")[0]
        assert response.json()["error"]["fields"] == {name: ["must not contain NUL characters"]}, url
    # and a page refuses it the same way, instead of failing deep in a query
    page = client_for(people.owner).get("/boxes/?q=a%00b")
    assert page.status_code == 400
    assert b"NUL" in page.content


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/v1/boxes/", "state"),
        ("/api/v1/boxes/", "organization"),
        ("/api/v1/boxes/", "server"),
        ("/api/v1/boxes/", "drift"),
        ("/api/v1/boxes/{box}/commands/", "state"),
        ("/api/v1/boxes/{box}/commands/", "kind"),
        ("/api/v1/boxes/{box}/events/", "from"),
        ("/api/v1/boxes/{box}/events/", "kind"),
        ("/api/v1/boxes/{box}/telemetry", "resolution"),
        ("/api/v1/boxes/{box}/telemetry", "to"),
        ("/api/v1/organizations/{org}/events/", "to"),
        ("/api/v1/organizations/{org}/alerts/", "state"),
        ("/api/v1/notification-deliveries/", "alert"),
        ("/api/v1/firmware/releases/", "state"),
        ("/api/v1/firmware/releases/", "channel"),
    ],
)
def test_a_typed_query_parameter_given_empty_is_a_400_naming_it(
    people: Any, box_factory: Any, client_for: Any, path: str, parameter: str
) -> None:
    # given a list whose filter has a type (an enum, a UUID, a date-time, a boolean)
    box = box_factory(organization=people.org)
    url = path.format(box=box.pk, org=people.org.pk)
    client = client_for(people.staff)
    assert client.get(url).status_code == 200
    # when the filter is given empty (it was taken as no filter at all: found by the fuzzing)
    response = client.get(f"{url}?{parameter}=")
    # then it is refused, naming it
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == [parameter]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # each endpoint coerced the wrong type, or ignored the unknown key (found by the fuzzing)
        ("/api/v1/regions/", {"code": 1228440, "name": "Region"}, "code"),
        ("/api/v1/regions/", {"code": "eu-1", "name": "Region", "colour": "red"}, "colour"),
        ("/api/v1/firmware/releases/", {"version": "1.0", "hardware_models": [7]}, "hardware_models[0]"),
        ("/api/v1/firmware/releases/{release}/withdraw", {"reason": "x", "downgrade": None}, "downgrade"),
        ("/api/v1/firmware/releases/{release}/withdraw", {"reason": " " + "*" * 2000}, "reason"),
        ("/api/v1/rollouts/preview", {"release": "{release}", "force": "yes"}, "force"),
        ("/api/v1/boxes/{box}/commands/", {"kind": "reboot", "ttl_s": "60"}, "ttl_s"),
        ("/api/v1/organizations/{org}/alert-rules/", {"name": 5, "kind": "box_offline"}, "name"),
        (
            "/api/v1/organizations/{org}/notification-targets/",
            {"name": "n", "kind": "email", "enabled": 1},
            "enabled",
        ),
        ("/api/v1/boxes/{box}/revoke-credentials", {"reissue": "true"}, "reissue"),
    ],
)
def test_every_request_body_is_strict_about_types_and_keys(
    people: Any, claimed_box_factory: Any, client_for: Any, path: str, body: dict[str, Any], field: str
) -> None:
    release = make_release("7.7.7")
    box = claimed_box_factory(people.org)
    values = {"box": box.pk, "org": people.org.pk, "release": release.pk}
    body = {key: value.format(**values) if isinstance(value, str) else value for key, value in body.items()}
    before = counts()
    response = client_for(people.staff).post(path.format(**values), body, format="json")
    assert_refused(response, 400, before)
    assert field in response.json()["error"]["fields"], response.content
