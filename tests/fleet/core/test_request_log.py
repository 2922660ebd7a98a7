"""One structured log line per HTTP request: request id, route, status, duration, who; never the
query string (tokens travel there sometimes) nor headers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from fleet.core.logging import JsonFormatter, RequestIdFilter

pytestmark = pytest.mark.django_db


def test_each_request_logs_one_json_line_without_secrets(
    client_for: Any, people: Any, box_factory: Any, caplog: Any
) -> None:
    box = box_factory(organization=people.org)
    client = client_for(people.viewer)
    with caplog.at_level(logging.INFO, logger="otb.http"):
        response = client.get(
            f"/api/v1/boxes/{box.pk}/?secret_token=hunter2", HTTP_X_REQUEST_ID="req-abc-123"
        )
    assert response.status_code == 200
    records = [record for record in caplog.records if record.name == "otb.http"]
    assert len(records) == 1
    record = records[0]
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "http_request"
    assert line["route"] == "/api/v1/boxes/<uuid:box_id>/"
    assert line["path"] == f"/api/v1/boxes/{box.pk}/"
    assert line["status"] == 200 and line["duration_ms"] >= 0
    assert line["user_id"] == people.viewer.pk
    assert line["request_id"] == response["X-Request-ID"]
    assert "hunter2" not in json.dumps(line)
