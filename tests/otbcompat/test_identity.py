"""Identity of stock OverTheBox boxes over /1.0: subscribe, JWTs, renew_jwt, errors in the box's shape.

Requests are shaped like the box's ``otb_call``: pretty-printed JSON bodies, ``Content-Type:
application/json`` on every call (GETs too), the old Bearer on renew_jwt, and no redirect followed.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.test.utils import override_settings

from fleet.core.models import Box
from otbcompat.jwt import JwtExpired, JwtInvalid, jwt_decode, jwt_encode
from otbcompat.models import OtbDevice
from otbcompat.services import device_revoke, jwts_revoke, token_digest

pytestmark = pytest.mark.django_db

KEYS = ["first-key-signs", "second-key-verifies"]


def otb_call(client: Client, method: str, path: str, body: Any = None, jwt: str = "", **extra: Any) -> Any:
    """The box's otb_call: curl -X METHOD -H 'Content-Type: application/json' [-H Bearer] -d <pretty JSON>."""
    headers: dict[str, Any] = {"HTTP_X_OVERTHEBOX_VERSION": "v1.1.3"}
    if jwt:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {jwt}"
    data = json.dumps(body, indent=2) if body is not None else ""
    return client.generic(method, f"/1.0/{path}", data, content_type="application/json", **headers, **extra)


def subscribe(client: Client, mac: str = "00:0d:b9:4a:11:22", **extra: Any) -> dict[str, Any]:
    response = otb_call(
        client,
        "POST",
        "subscribe",
        {"private_ips": ["192.168.100.1"], "board": "pc-engines-apu2", "macaddr": mac},
        **extra,
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_subscribe_creates_a_pending_device_with_a_hashed_token() -> None:
    client = Client()
    answer = subscribe(client)
    device = OtbDevice.objects.get(id=answer["device_id"])
    assert device.mac == "00:0d:b9:4a:11:22" and device.board == "pc-engines-apu2"
    assert device.private_ips == ["192.168.100.1"]
    assert answer["token"] and device.token_hash == token_digest(answer["token"])
    assert answer["token"] not in device.token_hash
    assert answer["service"] is None
    # the JWT it got works at once on the poll
    todo = otb_call(client, "GET", f"devices/{answer['device_id']}/actions/todo", jwt=answer["jwt"])
    assert todo.status_code == 200, todo.content
    assert todo.json()["action"] == "wait" and todo.json()["arguments"]["delay"] > 0


def test_routes_answer_without_trailing_slash_redirects() -> None:
    client = Client()
    for path in ("subscribe", "renew_jwt"):
        response = otb_call(client, "POST", path, {})
        assert response.status_code == 400, (path, response.status_code)
        assert response.json()["class"] == "Client::BadRequest"


def test_subscribe_cannot_take_over_an_existing_device_or_box() -> None:
    client = Client()
    first = subscribe(client, mac="00:0d:b9:4a:11:22")
    Box.objects.create(serial="OTB-IMPORTED-1", mac="00:0d:b9:4a:11:33")
    second = subscribe(client, mac="00:0d:b9:4a:11:22")
    third = subscribe(client, mac="00:0d:b9:4a:11:33")
    assert len({first["device_id"], second["device_id"], third["device_id"]}) == 3
    # the first device's token still renews, and the newcomer's token cannot renew the first device
    assert (
        otb_call(client, "POST", "renew_jwt", {"id": first["device_id"], "token": first["token"]}).status_code
        == 200
    )
    stolen = otb_call(client, "POST", "renew_jwt", {"id": first["device_id"], "token": second["token"]})
    assert stolen.status_code == 403 and stolen.json()["class"] == "Client::Unauthorized"
    # a device's JWT cannot read another device's actions
    other = otb_call(client, "GET", f"devices/{first['device_id']}/actions/todo", jwt=second["jwt"])
    assert other.status_code == 403 and other.json()["class"] == "Client::Forbidden"
    assert Box.objects.get(serial="OTB-IMPORTED-1").organization_id is None


@override_settings(OTB={**settings.OTB, "OTB_COMPAT_SUBSCRIBE_MAX_PER_IP": 3})
def test_subscribe_is_rate_limited_per_source_address() -> None:
    client = Client()
    for index in range(3):
        subscribe(client, mac=f"00:0d:b9:00:00:0{index}", REMOTE_ADDR="203.0.113.7")
    refused = otb_call(
        client, "POST", "subscribe", {"board": "x", "macaddr": "00:0d:b9:00:00:09"}, REMOTE_ADDR="203.0.113.7"
    )
    assert refused.status_code == 429 and refused.json()["class"] == "Client::TooManyRequests"
    assert not OtbDevice.objects.filter(mac="00:0d:b9:00:00:09").exists()
    subscribe(client, mac="00:0d:b9:00:00:09", REMOTE_ADDR="203.0.113.8")  # another address is not held back


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"board": "apu2", "macaddr": "nope"}, "macaddr"),
        ({"board": "", "macaddr": "00:0d:b9:4a:11:22"}, "board"),
        ({"board": "apu2", "macaddr": "00:0d:b9:4a:11:22", "private_ips": ["x"]}, "private_ips"),
        (["not", "an", "object"], "object"),
    ],
)
def test_subscribe_bad_input_names_the_field_and_writes_nothing(body: Any, word: str) -> None:
    response = otb_call(Client(), "POST", "subscribe", body)
    assert response.status_code == 400
    assert word in response.json()["message"] and response.json()["class"] == "Client::BadRequest"
    assert not OtbDevice.objects.exists()


def test_invalid_json_is_a_clear_400() -> None:
    response = Client().generic("POST", "/1.0/subscribe", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["class"] == "Client::BadRequest"


def test_expired_jwt_gets_401_unauthorized_then_renew_with_the_old_bearer_resumes_polling() -> None:
    client = Client()
    with override_settings(OTB={**settings.OTB, "OTB_COMPAT_JWT_TTL_S": 1}):
        answer = subscribe(client)
    time.sleep(1.1)
    todo_path = f"devices/{answer['device_id']}/actions/todo"
    expired = otb_call(client, "GET", todo_path, jwt=answer["jwt"])
    assert expired.status_code == 401
    assert expired.json()["class"] == "Client::Unauthorized"
    renewed = otb_call(
        client, "POST", "renew_jwt", {"id": answer["device_id"], "token": answer["token"]}, jwt=answer["jwt"]
    )
    assert renewed.status_code == 200, renewed.content
    assert otb_call(client, "GET", todo_path, jwt=renewed.json()["jwt"]).status_code == 200


def test_revoked_jwts_and_revoked_devices_stop_working() -> None:
    client = Client()
    answer = subscribe(client)
    device = OtbDevice.objects.get(id=answer["device_id"])
    todo_path = f"devices/{device.id}/actions/todo"
    jwts_revoke(device)
    stale = otb_call(client, "GET", todo_path, jwt=answer["jwt"])
    assert stale.status_code == 401 and stale.json()["class"] == "Client::Unauthorized"
    fresh = otb_call(client, "POST", "renew_jwt", {"id": str(device.id), "token": answer["token"]}).json()[
        "jwt"
    ]
    assert otb_call(client, "GET", todo_path, jwt=fresh).status_code == 200
    device_revoke(device)
    gone = otb_call(client, "GET", todo_path, jwt=fresh)
    assert gone.status_code == 403 and gone.json()["class"] == "Client::Unauthorized"  # the box re-subscribes
    renew = otb_call(client, "POST", "renew_jwt", {"id": str(device.id), "token": answer["token"]})
    assert renew.status_code == 403 and renew.json()["class"] == "Client::Unauthorized"


def test_missing_or_forged_bearer_is_401_unauthorized() -> None:
    client = Client()
    answer = subscribe(client)
    todo_path = f"devices/{answer['device_id']}/actions/todo"
    for jwt in ("", "null", answer["jwt"][:-2] + "xx"):
        response = otb_call(client, "GET", todo_path, jwt=jwt)
        assert response.status_code == 401 and response.json()["class"] == "Client::Unauthorized", jwt


def test_jwt_key_rotation_first_key_signs_every_key_verifies() -> None:
    now = time.time()
    token = jwt_encode({"sub": "x", "exp": now + 60}, ["old"])
    assert jwt_decode(token, ["new", "old"], now=now)["sub"] == "x"
    with pytest.raises(JwtInvalid):
        jwt_decode(token, ["new"], now=now)
    with pytest.raises(JwtExpired):
        jwt_decode(token, ["old"], now=now + 61)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    none_alg = none_header + "." + token.split(".", 1)[1]
    with pytest.raises(JwtInvalid):
        jwt_decode(none_alg, ["old"], now=now)


def test_jwt_matches_an_independent_hs256_implementation() -> None:
    """RFC 7515 appendix A.1's key and claims; the signature must match what the RFC prints."""
    key = base64.urlsafe_b64decode(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow=="
    )
    header_b64 = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9"
    payload_b64 = (
        "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
    )
    signature = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    token = f"{header_b64}.{payload_b64}.{signature}"
    claims = jwt_decode(token, [key], now=1300819379)
    assert claims["iss"] == "joe"


def test_settings_keys_rotate_new_key_first_old_jwts_still_verify_until_dropped() -> None:
    client = Client()
    with override_settings(OTB_COMPAT_JWT_KEYS=["key-a"]):
        answer = subscribe(client)
    todo_path = f"devices/{answer['device_id']}/actions/todo"
    with override_settings(OTB_COMPAT_JWT_KEYS=["key-b", "key-a"]):
        assert otb_call(client, "GET", todo_path, jwt=answer["jwt"]).status_code == 200
        renewed = otb_call(client, "POST", "renew_jwt", {"id": answer["device_id"], "token": answer["token"]})
        new_jwt = renewed.json()["jwt"]
    with override_settings(OTB_COMPAT_JWT_KEYS=["key-b"]):
        dropped = otb_call(client, "GET", todo_path, jwt=answer["jwt"])
        assert dropped.status_code == 401 and dropped.json()["class"] == "Client::Unauthorized"
        assert otb_call(client, "GET", todo_path, jwt=new_jwt).status_code == 200
