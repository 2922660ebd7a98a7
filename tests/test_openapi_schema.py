"""The OpenAPI schema is a contract a generated client can rely on: ``manage.py spectacular --validate
--fail-on-warn`` is clean (no component name collision, no guessed serializer, no unresolved field),
every serializer component has a name of its own, lists are declared as the pages they answer, every
operation declares its success body and the errors it can answer in the one error shape, and under
/api/ even a failure outside any view answers in that shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("get", "post", "put", "patch", "delete")
ERROR_REF = {"$ref": "#/components/schemas/Error"}


def spectacular(*args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py spectacular --validate --fail-on-warn`` in a process of its own (as CI would)."""
    return subprocess.run(
        [sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("schema") / "schema.json"
    result = spectacular("--format", "openapi-json", "--file", str(path))
    # the generation emits no warning or error at all, and the document is valid OpenAPI 3
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Warning" not in result.stderr and "Error" not in result.stderr, result.stderr[-4000:]
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def component_of(schema: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    name = reference["$ref"].rsplit("/", 1)[1]
    component: dict[str, Any] = schema["components"]["schemas"][name]
    return component


def json_body(response: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = response["content"]["application/json"]["schema"]
    return body


def test_the_schema_is_generated_without_a_warning_and_validates(schema: dict[str, Any]) -> None:
    assert len(operations(schema)) > 80


def test_a_component_name_collision_fails_the_check() -> None:
    # given two views whose nested input serializers would share one component name
    result = spectacular("--urlconf", "tests.openapi_collision_urls", "--file", os.devnull)
    # then the generation refuses, naming the collision
    assert result.returncode != 0
    assert 'identical names "ProbeInputRequest"' in result.stderr


def test_each_create_endpoint_declares_its_own_body(schema: dict[str, Any]) -> None:
    # the issue: POST /regions/, /servers/ and /pools/ declared the reassign-server body {server}
    def fields(path: str) -> set[str]:
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return set(component_of(schema, body)["properties"])

    assert fields("/api/v1/regions/") == {"code", "name"}
    assert {"name", "region", "hostname", "public_ipv4", "capacity"} <= fields("/api/v1/servers/")
    assert {"name", "cidr", "purpose"} <= fields("/api/v1/pools/")
    assert fields("/api/v1/boxes/{box_id}/reassign-server") == {"server"}


@pytest.mark.parametrize(
    "path",
    ["/api/v1/boxes/", "/api/v1/audit/", "/api/v1/organizations/", "/api/v1/tokens/", "/api/v1/rollouts/"],
)
def test_lists_are_declared_as_the_pages_they_answer(schema: dict[str, Any], path: str) -> None:
    page = component_of(schema, json_body(schema["paths"][path]["get"]["responses"]["200"]))
    assert page["type"] == "object"
    assert {"count", "next", "previous", "results"} <= set(page["properties"])
    assert page["properties"]["results"]["type"] == "array"


def test_every_operation_declares_its_success_body(schema: dict[str, Any]) -> None:
    # every 2xx answer of every operation has a described body (a 204 has none by definition)
    missing = [
        f"{method} {path} {status}"
        for method, path, operation in operations(schema)
        for status, response in operation["responses"].items()
        if status.startswith("2") and status != "204" and not response.get("content")
    ]
    assert missing == []
    rollout = schema["paths"]["/api/v1/rollouts/{rollout_id}/"]["get"]["responses"]["200"]
    assert "progress" in component_of(schema, json_body(rollout))["properties"]


def test_every_operation_declares_the_errors_it_can_answer(schema: dict[str, Any]) -> None:
    assert set(schema["components"]["schemas"]["Error"]["properties"]) == {"error"}
    problems = []
    for method, path, operation in operations(schema):
        responses = operation["responses"]
        expected = {"400"}
        if operation.get("security") != [{}]:
            expected |= {"401", "403"}
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation and "application/json" in operation["requestBody"]["content"]:
            expected |= {"413", "415"}
        for status in sorted(expected - set(responses)):
            problems.append(f"{method} {path}: no {status}")
        for status, response in responses.items():
            if status >= "400" and status != "416" and json_body(response) != ERROR_REF:
                problems.append(f"{method} {path}: {status} is not the error shape")
    assert problems == []
    claim = schema["paths"]["/api/v1/boxes/claim"]["post"]["responses"]
    assert {"404", "409", "429"} <= set(claim)
    assert claim["429"]["headers"]["Retry-After"]["required"] is True


def test_the_schema_server_is_the_public_address(schema: dict[str, Any]) -> None:
    assert [server["url"] for server in schema["servers"]] == ["http://127.0.0.1:8000"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    ["/api/v1/no-such-endpoint", "/api/v1/boxes/not-a-uuid/", "/api/v1/boxes/not-a-uuid/wan-policy"],
)
def test_a_failure_outside_any_view_answers_in_the_error_shape(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_pages_keep_their_html_not_found(client: Any) -> None:
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_every_json_request_body_refuses_unknown_keys(schema: dict[str, Any]) -> None:
    # the schema says what the API does: unknown keys are refused (fleet.core.serializers.StrictSerializer)
    loose = []
    for method, path, operation in operations(schema):
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            body = component_of(schema, content["application/json"]["schema"])
            if body.get("additionalProperties") is not False:
                loose.append(f"{method} {path}")
    assert loose == []
