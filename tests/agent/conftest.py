from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fakefleet import FakeHTTP, FakeWS


@pytest.fixture
def fake_http():
    srv = FakeHTTP()
    yield srv
    srv.close()


@pytest.fixture
async def fleet(fake_http):
    ws = FakeWS(fake_http)
    await ws.start()
    yield fake_http, ws
    await ws.stop()
