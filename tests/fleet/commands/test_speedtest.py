"""The agent's speed-test endpoint, both directions: the upload (POST) is counted exactly and read in
small chunks past the 1 MB body limit of every other endpoint, a bad or oversized Content-Length is
refused naming it, only an agent token may test, and a box runs one test (download or upload) at a
time. Real Django stack, PostgreSQL and Redis; the streamed-through-uvicorn case is in
tests/e2e/test_speedtest_e2e.py."""

from __future__ import annotations

import io
import os
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from rest_framework.test import APIClient

from fleet.commands.speedtest import (
    BUSY_RETRY_AFTER_S,
    SLOT_TTL_S,
    SPEEDTEST_MAX_BYTES,
    UPLOAD_READ_CHUNK,
    SpeedtestSlot,
    speedtest_slot_acquire,
)
from tests.conftest import bearer, streamed_body

pytestmark = pytest.mark.django_db

URL = "/api/v1/agent/speedtest"


def upload(client: APIClient, token: str | None, data: bytes, **extra: Any) -> Any:
    if token:
        extra = {**bearer(token), **extra}
    return client.post(URL, data=data, content_type="application/octet-stream", **extra)


class RecordingInput(io.BytesIO):
    """A request body that remembers the size of every read the server made."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


@pytest.fixture
def box_and_token(box_factory: Any, agent_token_factory: Any) -> tuple[Any, str]:
    box = box_factory()
    return box, agent_token_factory(box)


@pytest.mark.parametrize("size", [0, 1, 65_537, 3_000_001])
def test_an_upload_is_answered_with_exactly_the_bytes_received(
    api_client: APIClient, box_and_token: tuple[Any, str], size: int
) -> None:
    # given an agent, and a body larger than DATA_UPLOAD_MAX_MEMORY_SIZE in the biggest case
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < 3_000_001
    _, token = box_and_token
    # when it uploads that many (random, not only zero) bytes (the test client leaves out a zero
    # Content-Length; http.client, the agent's, sends it)
    response = upload(api_client, token, os.urandom(size), CONTENT_LENGTH=str(size))
    # then the server counted them all, and timed them
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["bytes"] == size
    assert isinstance(body["duration_s"], float) and body["duration_s"] >= 0
    assert response["Cache-Control"] == "no-store"


def test_an_upload_is_read_in_small_chunks_and_never_kept(
    api_client: APIClient, box_and_token: tuple[Any, str]
) -> None:
    _, token = box_and_token
    size = 2 * 1024 * 1024 + 5
    stream = RecordingInput(bytes(size))
    response = upload(api_client, token, b"", CONTENT_LENGTH=str(size), **{"wsgi.input": stream})
    assert response.status_code == 200, response.content
    assert response.json()["bytes"] == size
    # the first read is one byte (the clock starts with the body), then at most 64 KiB at a time
    assert stream.reads[0] == 1
    assert 0 < max(stream.reads) <= UPLOAD_READ_CHUNK
    assert len(stream.reads) >= size // UPLOAD_READ_CHUNK


def test_a_body_shorter_than_its_content_length_is_400_and_frees_the_slot(
    api_client: APIClient, box_and_token: tuple[Any, str]
) -> None:
    # given a client that declares 5000 bytes and goes away after 1000
    _, token = box_and_token
    response = upload(
        api_client, token, b"", CONTENT_LENGTH="5000", **{"wsgi.input": io.BytesIO(bytes(1000))}
    )
    # then the answer says so, naming the header
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and "1000 of 5000" in error["message"]
    assert "Content-Length" in error["fields"]
    # and the box may test again at once
    assert upload(api_client, token, bytes(10)).status_code == 200


@pytest.mark.parametrize(
    ("content_length", "status", "code"),
    [
        (str(SPEEDTEST_MAX_BYTES + 1), 413, "too_large"),
        ("999999999999999999999", 413, "too_large"),
        ("abc", 400, "invalid"),
        ("-1", 400, "invalid"),
        ("1e6", 400, "invalid"),
        (" 12", 400, "invalid"),
        ("١٢", 400, "invalid"),  # Arabic-Indic digits: isdigit() but not a Content-Length
        ("", 411, "length_required"),
    ],
)
def test_a_bad_or_oversized_content_length_is_refused_naming_it(
    api_client: APIClient, box_and_token: tuple[Any, str], content_length: str, status: int, code: str
) -> None:
    box, token = box_and_token
    # the body is never read: the declared size alone is refused
    response = upload(api_client, token, b"x" * 12, CONTENT_LENGTH=content_length)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["code"] == code
    assert list(error["fields"]) == ["Content-Length"]
    # and a refused upload does not hold the box's slot
    assert cache.get(SpeedtestSlot(box_id=box.pk).key) is None


def test_the_cap_itself_is_accepted_as_a_declared_size(
    api_client: APIClient, box_and_token: tuple[Any, str]
) -> None:
    """SPEEDTEST_MAX_BYTES is allowed (the test client cannot send 100 MiB cheaply: the body here ends
    early, so the answer is the short-body 400, not a size refusal)."""
    _, token = box_and_token
    response = upload(
        api_client, token, b"", CONTENT_LENGTH=str(SPEEDTEST_MAX_BYTES), **{"wsgi.input": io.BytesIO(b"")}
    )
    assert response.status_code == 400
    assert f"0 of {SPEEDTEST_MAX_BYTES}" in response.json()["error"]["message"]


def test_only_an_agent_token_may_upload(
    api_client: APIClient,
    box_and_token: tuple[Any, str],
    provisioned_region: Any,
    client_for: Any,
    people: Any,
) -> None:
    callers = {
        "no token": (APIClient(), None, 401),
        "wrong token": (APIClient(), "otba_" + "x" * 40, 401),
        "not a bearer token": (APIClient(HTTP_AUTHORIZATION="Basic dXNlcjpwdw=="), None, 401),
        "server token": (APIClient(), provisioned_region.server_token, 403),
        "signed-in person": (client_for(people.owner), None, 401),
    }
    for name, (client, token, status) in callers.items():
        response = upload(client, token, bytes(100))
        assert response.status_code == status, (name, response.content)
        assert response.json()["error"]["code"], name


def test_a_revoked_token_may_not_upload(
    api_client: APIClient, box_and_token: tuple[Any, str], agent_token_factory: Any
) -> None:
    box, old_token = box_and_token
    agent_token_factory(box)  # revokes the old token
    assert upload(api_client, old_token, bytes(100)).status_code == 401


def test_a_box_runs_one_speed_test_at_a_time(
    api_client: APIClient, box_and_token: tuple[Any, str], box_factory: Any, agent_token_factory: Any
) -> None:
    # given a box whose slot is taken (a test in progress, possibly in another server process)
    box, token = box_and_token
    slot = speedtest_slot_acquire(box_id=box.pk)
    # then neither an upload nor a download may start: 429, with Retry-After
    for response in (
        upload(api_client, token, bytes(100)),
        api_client.get(f"{URL}?bytes=10", **bearer(token)),
    ):
        assert response.status_code == 429, response.content
        assert response["Retry-After"] == str(BUSY_RETRY_AFTER_S)
        assert response.json()["error"]["code"] == "speedtest_busy"
    # but another box may test meanwhile
    other_token = agent_token_factory(box_factory())
    assert upload(api_client, other_token, bytes(100)).status_code == 200
    # and once the test ends, this box may test again
    slot.release()
    assert upload(api_client, token, bytes(100)).json() == {
        "bytes": 100,
        "duration_s": pytest.approx(0, abs=1),
    }


def test_speedtest_streams_the_asked_number_of_zero_bytes(
    api_client: Any, box_factory: Any, agent_token_factory: Any
) -> None:
    token = agent_token_factory(box_factory())
    response = api_client.get("/api/v1/agent/speedtest?bytes=3000000", **bearer(token))
    assert response.status_code == 200
    payload = b"".join(response.streaming_content)
    assert len(payload) == 3_000_000 and payload.count(0) == 3_000_000
    for bad in ("104857601", "-1", "ten", "1e6"):
        response = api_client.get(f"/api/v1/agent/speedtest?bytes={bad}", **bearer(token))
        assert response.status_code == 400
        assert "bytes" in response.json()["error"]["fields"]


def test_a_download_holds_the_slot_until_its_stream_is_closed(
    api_client: APIClient, box_and_token: tuple[Any, str]
) -> None:
    box, token = box_and_token
    # given a download whose stream has not been read yet
    download = api_client.get(f"{URL}?bytes=2000000", **bearer(token))
    assert download.status_code == 200
    # then the box may not upload meanwhile
    assert upload(api_client, token, bytes(10)).status_code == 429
    # and once the download has been sent (the server then closes the stream), it may
    assert len(streamed_body(download)) == 2_000_000
    assert cache.get(SpeedtestSlot(box_id=box.pk).key) is None
    assert upload(api_client, token, bytes(10)).status_code == 200


def test_a_slot_expires_unless_bytes_keep_moving(box_and_token: tuple[Any, str]) -> None:
    box, _ = box_and_token
    slot = speedtest_slot_acquire(box_id=box.pk)
    client = cache._cache.get_client()  # type: ignore[attr-defined]
    redis_key = cache.make_and_validate_key(slot.key)
    assert 0 < client.ttl(redis_key) <= SLOT_TTL_S
    # while bytes move, the holder pushes the expiry back (at most every third of the TTL)
    client.expire(redis_key, 5)
    slot.keep()
    assert client.ttl(redis_key) <= 5
    slot.touched_at -= SLOT_TTL_S
    slot.keep()
    assert client.ttl(redis_key) > 5
    # a holder whose slot expired and was taken by another test does not free the other's slot
    cache.set(slot.key, "someone-else", timeout=SLOT_TTL_S)
    slot.release()
    assert cache.get(slot.key) == "someone-else"
    cache.delete(slot.key)


def test_other_endpoints_still_refuse_bodies_over_the_limit(
    api_client: APIClient, box_and_token: tuple[Any, str]
) -> None:
    """The speed test's exemption is its own: the agent's JSON endpoints keep the 413."""
    box, token = box_and_token
    padding = "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = api_client.post(
        "/api/v1/agent/config/applied",
        data=f'{{"config_hash": "{box.config_hash or "ab"}", "padding": "{padding}"}}',
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


def test_the_schema_documents_the_upload(api_client: APIClient, people: Any, client_for: Any) -> None:
    schema = client_for(people.staff).get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"][URL]["post"]
    assert "application/octet-stream" in operation["requestBody"]["content"]
    assert operation["security"] == [{"bearerAuth": []}]
    output = schema["components"]["schemas"]["AgentSpeedtestOutput"]
    assert set(output["properties"]) == {"bytes", "duration_s"}
