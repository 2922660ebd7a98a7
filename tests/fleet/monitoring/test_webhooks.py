"""Posting a webhook (fleet.monitoring.webhooks): to the address that was checked (no DNS rebinding),
with the name as Host, never to a private address, an unresolvable name a recorded error."""

from __future__ import annotations

from typing import Any

import pytest

from fleet.core.errors import InvalidInput
from tests.fleet.monitoring.conftest import WebhookReceiver

pytestmark = pytest.mark.django_db


class FakeResolver:
    """``socket.getaddrinfo`` answering chosen names from a queue of answers (the last one repeats)
    and every other name from the real resolver (Redis and the test server keep working)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        import socket

        self.real = socket.getaddrinfo
        self.answers = answers
        self.calls: dict[str, int] = {}

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        import socket

        if host not in self.answers:
            return self.real(host, port, *args, **kwargs)
        queue = self.answers[host]
        self.calls[host] = self.calls.get(host, 0) + 1
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, int(port)) if ":" not in a else (a, int(port), 0, 0),
            )
            for a in addresses
        ]


def test_webhook_connects_to_the_address_it_checked_not_a_rebound_one(
    receiver: WebhookReceiver, monkeypatch: Any, settings: Any
) -> None:
    import socket

    from fleet.monitoring import webhooks

    settings.OTB = {**settings.OTB, "WEBHOOK_ALLOW_PRIVATE": False}
    monkeypatch.setattr(webhooks, "TIMEOUT_S", 1)
    # given a name that first resolves to a public address, then (a rebinding DNS) to our receiver
    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    # when a webhook is posted to it
    response = webhooks.webhook_post(
        url=f"http://hooks.rebind.test:{port}/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    # then the name was resolved once, and the private address never received the POST
    assert resolver.calls == {"hooks.rebind.test": 1}
    assert receiver.requests == []
    assert response.status is None and response.error


def test_webhook_to_a_name_posts_to_its_address_with_the_name_as_host(
    receiver: WebhookReceiver, monkeypatch: Any
) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post

    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.local.test": [["127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url=f"http://hooks.local.test:{port}/hook?x=1", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status == 200 and response.error == "", response
    (request,) = receiver.requests
    assert request["headers"]["Host"] == f"hooks.local.test:{port}"


def test_webhook_to_a_name_with_any_private_address_is_refused(
    receiver: WebhookReceiver, monkeypatch: Any, settings: Any
) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post, webhook_url_validate

    settings.OTB = {**settings.OTB, "WEBHOOK_ALLOW_PRIVATE": False}
    port = receiver.server.server_address[1]
    resolver = FakeResolver({"hooks.example.com": [["93.184.216.34", "127.0.0.1"]]})
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url=f"http://hooks.example.com:{port}/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status is None and response.error == "destination address is not public"
    assert receiver.requests == []
    # an address literal or a local name is refused when the target is saved, naming the field
    for url in (receiver.url, "http://[::1]/hook", "http://localhost:8080/x", "http://10.1.2.3/x"):
        with pytest.raises(InvalidInput) as caught:
            webhook_url_validate(url)
        assert caught.value.field == "url"
    assert webhook_url_validate("https://hooks.example.com/otb") == "https://hooks.example.com/otb"


def test_webhook_to_an_unresolvable_name_is_a_recorded_error_not_a_crash(monkeypatch: Any) -> None:
    import socket

    from fleet.monitoring.webhooks import webhook_post

    real = socket.getaddrinfo

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    response = webhook_post(
        url="http://no-such-host.invalid/hook", secret="s", event="test", body=b"{}", timestamp=1
    )
    assert response.status is None and "cannot resolve no-such-host.invalid" in response.error
