"""The agent's firmware upgrade: resumable download (HTTP Range), SHA-256 and ed25519 checks that
refuse a tampered image with the reason, the apply command, progress stages."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from otb_agent import firmware

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"agent-test-key").digest())
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()
IMAGE = bytes(range(256)) * 2000  # 512,000 bytes


class ImageServer:
    """Serves IMAGE at /img; can cut the first response short and ignore Range; records requests."""

    def __init__(
        self, body: bytes = IMAGE, cut_first_at: int | None = None, honour_range: bool = True
    ) -> None:
        self.body = body
        self.cut_first_at = cut_first_at
        self.honour_range = honour_range
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                body = server.body
                start = 0
                status = 200
                header = self.headers.get("Range")
                if header and server.honour_range:
                    start = int(header.split("=")[1].split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                payload = body[start:]
                if server.cut_first_at is not None and len(server.requests) == 1:
                    payload = payload[: server.cut_first_at]
                self.wfile.write(payload)
                self.wfile.flush()
                if server.cut_first_at is not None and len(server.requests) == 1:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ImageServer] = []

    def make(**kwargs: Any) -> ImageServer:
        servers.append(ImageServer(**kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def params(image: bytes = IMAGE, *, url: str = "/img", signature: bytes | None = None) -> dict[str, Any]:
    return {
        "release_id": "r1",
        "version": "24.1.0",
        "url": url,
        "size": len(image),
        "sha256": hashlib.sha256(image).hexdigest(),
        "signature": base64.b64encode(signature if signature is not None else KEY.sign(image)).decode(),
    }


def test_download_verify_and_apply_report_each_stage(serve: Any, tmp_path: Path) -> None:
    # given a server with the image and an apply command that succeeds
    server = serve()
    seen: list[tuple[int, str]] = []

    # when the upgrade runs
    output = firmware.run_upgrade(
        params(),
        state_dir=str(tmp_path),
        server=server.url,
        token="otba_secret",
        public_key=PUBLIC,
        current_version="23.0",
        apply_command=["sh", "-c", 'test -s "$0" && echo flashed', "{image}"],
        progress=lambda pct, msg: seen.append((pct, msg)),
    )

    # then it downloaded with the agent token, verified, applied and reports rebooting
    assert (
        output["stage"] == "rebooting"
        and output["version"] == "24.1.0"
        and "flashed" in output["apply_output"]
    )
    assert server.requests[0]["authorization"] == "Bearer otba_secret"
    stages = [msg.split(":")[0] for _, msg in seen]
    assert stages.index("downloading") < stages.index("verifying") < stages.index("installing")
    assert stages[-1] == "rebooting"
    assert [pct for pct, _ in seen] == sorted(pct for pct, _ in seen)


def test_an_interrupted_download_resumes_with_range(serve: Any, tmp_path: Path) -> None:
    # given a server that cuts the first response after 100,000 bytes
    server = serve(cut_first_at=100_000)

    # when downloading
    path = firmware.download(
        firmware.UpgradeParams(params()), state_dir=str(tmp_path), server=server.url, token="t"
    )

    # then the second request asked for the rest only, and the file is whole
    assert len(server.requests) == 2
    assert server.requests[1]["range"] == "bytes=100000-"
    assert Path(path).read_bytes() == IMAGE


def test_a_server_ignoring_range_restarts_the_download(serve: Any, tmp_path: Path) -> None:
    # given a partial file left by an earlier attempt and a server that ignores Range
    server = serve(honour_range=False)
    part = Path(firmware.image_dir(str(tmp_path))) / (hashlib.sha256(IMAGE).hexdigest() + ".part")
    part.write_bytes(IMAGE[:5000])

    # when downloading
    path = firmware.download(firmware.UpgradeParams(params()), state_dir=str(tmp_path), server=server.url)

    # then the 200 answer replaced the partial file instead of being appended to it
    assert server.requests[0]["range"] == "bytes=5000-"
    assert Path(path).read_bytes() == IMAGE


def test_a_tampered_image_is_refused_with_the_reason(serve: Any, tmp_path: Path) -> None:
    # given a server whose image was altered after signing (same size)
    tampered = IMAGE[:-1] + b"\x00"
    server = serve(body=tampered)

    # when the upgrade runs, then the sha256 check refuses it and the image is deleted
    with pytest.raises(firmware.FirmwareError) as caught:
        firmware.run_upgrade(
            params(),
            state_dir=str(tmp_path),
            server=server.url,
            token="t",
            public_key=PUBLIC,
            apply_command="true",
        )
    assert caught.value.code == "sha256_mismatch"
    assert str(caught.value).startswith("sha256_mismatch: expected")
    assert not list(Path(tmp_path, "firmware").iterdir())


def test_a_wrong_signature_is_refused_with_the_reason(serve: Any, tmp_path: Path) -> None:
    # given the right image signed by another key
    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"someone else").digest())
    server = serve()
    marker = tmp_path / "applied"

    # when the upgrade runs, then the signature check refuses it and nothing is applied
    with pytest.raises(firmware.FirmwareError) as caught:
        firmware.run_upgrade(
            params(signature=other.sign(IMAGE)),
            state_dir=str(tmp_path),
            server=server.url,
            token="t",
            public_key=PUBLIC,
            apply_command=["touch", str(marker)],
        )
    assert caught.value.code == "bad_signature"
    assert not marker.exists()


def test_no_signing_key_refuses_before_downloading(serve: Any, tmp_path: Path) -> None:
    server = serve()
    with pytest.raises(firmware.FirmwareError) as caught:
        firmware.run_upgrade(params(), state_dir=str(tmp_path), server=server.url, token="t", public_key=None)
    assert caught.value.code == "no_signing_key"
    assert server.requests == []


def test_a_failing_apply_command_fails_the_upgrade(serve: Any, tmp_path: Path) -> None:
    server = serve()
    with pytest.raises(firmware.FirmwareError) as caught:
        firmware.run_upgrade(
            params(),
            state_dir=str(tmp_path),
            server=server.url,
            token="t",
            public_key=PUBLIC,
            apply_command=["sh", "-c", "echo image not supported >&2; exit 3"],
        )
    assert caught.value.code == "apply_failed"
    assert "exit 3" in str(caught.value) and "image not supported" in str(caught.value)


def test_an_external_url_never_gets_the_agent_token(serve: Any, tmp_path: Path) -> None:
    server = serve()
    firmware.download(
        firmware.UpgradeParams(params(url=server.url + "/img")),
        state_dir=str(tmp_path),
        server="http://fleet.invalid",
        token="otba_secret",
    )
    assert "authorization" not in server.requests[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "file:///etc/passwd"}, "url"),
        ({"sha256": "abc"}, "sha256"),
        ({"size": 0}, "size"),
        ({"signature": "not base64!"}, "signature"),
        ({"version": ""}, "version"),
    ],
)
def test_invalid_params_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(firmware.FirmwareError) as caught:
        firmware.UpgradeParams({**params(), **change})
    assert caught.value.code == "invalid_params" and message in str(caught.value)


def test_the_signing_key_comes_from_the_box_configuration(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"firmware_signing_public_key": PUBLIC}))
    assert firmware.signing_key_from_config(str(tmp_path)) == PUBLIC
