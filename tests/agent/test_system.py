"""The agent's BoxSystem seam: the real and the simulated box share one interface, and an agent
runs with any system handed to it (a fake here), nothing patched on from outside."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import time
import typing
import uuid
from typing import Any

import pytest
from otb_agent.agent import Agent
from otb_agent.backoff import Backoff
from otb_agent.collectors.simulated import SimulatedCollector, SimulatedSystem
from otb_agent.firmware import UpgradeParams
from otb_agent.host import HostSystem
from otb_agent.simulate import simulated_pick
from otb_agent.store import MemoryStore
from otb_agent.system import BoxSystem, CommandOutcome, FleetAccess, Progress

from tests.agent.test_agent import StubCollector, command, token_for, wait_for


class FakeSystem(BoxSystem):
    """A box that records what it is asked and reboots in process, like a simulated one."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pending = False
        self.reboots_completed = 0

    async def reboot(self) -> CommandOutcome:
        self.calls.append("reboot")
        self.pending = True
        return True, {"rebooting": True, "fake": True}, None

    async def restart_services(self) -> CommandOutcome:
        self.calls.append("restart_services")
        return True, {"restarted": True}, None

    def speed_test_output(self) -> dict[str, Any]:
        return {"fake": True}

    async def speed_test(
        self, fleet: FleetAccess, *, direction: str, nbytes: int, iface: str | None
    ) -> tuple[int, float]:
        self.calls.append(f"speed_test {direction} {nbytes} {iface} {fleet.token}")
        return nbytes, 0.5

    async def firmware_upgrade(
        self, fleet: FleetAccess, upgrade: UpgradeParams, *, current_version: str, progress: Progress
    ) -> CommandOutcome:
        self.calls.append(f"firmware_upgrade {current_version} -> {upgrade.version}")
        await progress.report(50, "installing: fake")
        return False, {"code": "apply_failed"}, "apply_failed: fake"

    def reboot_pending(self) -> bool:
        return self.pending

    async def complete_reboot(self, stopping: asyncio.Event) -> None:
        self.pending = False
        self.reboots_completed += 1

    def link_dropped(self) -> bool:
        return False


def upgrade_params(version: str = "23.05.4-otb.2") -> dict[str, Any]:
    return {
        "upgrade_id": str(uuid.uuid4()),
        "release_id": str(uuid.uuid4()),
        "version": version,
        "url": "/api/v1/agent/firmware/1/image",
        "size": 1000,
        "sha256": hashlib.sha256(b"image").hexdigest(),
        "signature": base64.b64encode(bytes(64)).decode(),
    }


def agent_with(fake_http: Any, ws: Any, system: BoxSystem, collector: Any = None, **kw: Any) -> Agent:
    return Agent(
        server=fake_http.url,
        ws_url=ws.url,
        token=token_for(fake_http),
        serial="BOX1",
        collector=collector or StubCollector(),
        store=MemoryStore(),
        system=system,
        backoff=Backoff(base=0.05, cap=0.2),
        telemetry_interval=0.1,
        ping_interval=None,
        **kw,
    )


async def run_until(agent: Agent, condition: Any, timeout: float = 20.0) -> None:
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(condition, timeout=timeout)
    finally:
        agent.stop()
        assert await asyncio.wait_for(task, 5) == 0


def interface(method: Any) -> tuple[Any, ...]:
    """A method's parameters (names, kinds, defaults) and its resolved type hints."""
    parameters = [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
    return parameters, typing.get_type_hints(method)


def test_the_real_and_the_simulated_box_share_the_interface() -> None:
    # given the interface's public methods
    methods = {
        name for name, _ in inspect.getmembers(BoxSystem, inspect.isfunction) if not name.startswith("_")
    }
    assert methods >= {"reboot", "restart_services", "diagnostics", "speed_test", "firmware_upgrade"}
    for implementation in (HostSystem, SimulatedSystem):
        # then each implementation is a complete BoxSystem, with the interface's signatures
        assert issubclass(implementation, BoxSystem)
        assert not inspect.isabstract(implementation), implementation
        for name in methods:
            assert interface(getattr(implementation, name)) == interface(getattr(BoxSystem, name)), (
                f"{implementation.__name__}.{name}"
            )
    assert HostSystem().reboot_pending() is False and HostSystem().link_dropped() is False


async def test_the_agent_runs_commands_on_the_system_it_is_given(fleet: Any) -> None:
    # given an agent holding a fake system (no attribute set on it from outside)
    fake_http, ws = fleet
    system = FakeSystem()
    agent = agent_with(fake_http, ws, system)
    restart = command("restart_services", {})
    speed = command("speed_test", {"bytes": 1000, "direction": "both", "iface": "wan2"})
    upgrade = command("firmware_upgrade", upgrade_params())
    bad_upgrade = command("firmware_upgrade", {"url": "/x"})

    async def send_commands() -> None:
        await wait_for(lambda: agent.welcomed)
        for c in (restart, speed, upgrade, bad_upgrade):
            await ws.send("BOX1", c)

    sender = asyncio.create_task(send_commands())
    # when it runs them
    await run_until(agent, lambda: len(ws.results) == 4)
    await sender
    results = {r["id"]: r for r in ws.results}
    # then the system did the work, and the handlers shaped the answers
    assert results[restart["id"]]["output"] == {"restarted": True}
    s = results[speed["id"]]
    assert s["ok"] is True and s["output"]["fake"] is True and s["output"]["iface"] == "wan2"
    assert s["output"]["bytes"] == 1000 and s["output"]["upload"]["bytes"] == 1000
    assert results[upgrade["id"]]["error"] == "apply_failed: fake"
    progress = {
        "type": "command_progress",
        "id": upgrade["id"],
        "progress": 50,
        "message": "installing: fake",
    }
    assert progress in ws.progress
    # and params the handler refuses never reach the system
    assert results[bad_upgrade["id"]]["error"].startswith("invalid_params")
    token = agent.fleet.token
    assert system.calls == [
        "restart_services",
        f"speed_test download 1000 wan2 {token}",
        f"speed_test upload 1000 wan2 {token}",
        "firmware_upgrade unknown -> 23.05.4-otb.2",
    ]


async def test_a_reboot_pending_on_the_system_ends_the_session_and_the_agent_comes_back(fleet: Any) -> None:
    # given an agent on a system that reboots in process
    fake_http, ws = fleet
    system = FakeSystem()
    agent = agent_with(fake_http, ws, system)
    reboot = command("reboot", {})

    async def send_reboot() -> None:
        await wait_for(lambda: agent.welcomed)
        await ws.send("BOX1", reboot)

    sender = asyncio.create_task(send_reboot())
    # when the server asks for a reboot
    await run_until(agent, lambda: system.reboots_completed == 1 and ws.sessions >= 2 and agent.welcomed)
    await sender
    # then the result reached the server, and a new session followed the reboot
    assert [r["output"] for r in ws.results] == [{"rebooting": True, "fake": True}]
    assert system.calls == ["reboot"] and not system.pending


async def test_a_simulated_box_reboots_into_its_new_firmware(fleet: Any) -> None:
    # given a simulated box whose upgrades succeed, and one whose upgrades fail
    fake_http, ws = fleet
    collector = SimulatedCollector("SIM-00042")
    system = SimulatedSystem(collector, reboot_delay=0.1, upgrade_stage_delay=0.01)
    agent = agent_with(fake_http, ws, system, collector=collector)
    upgrade = command("firmware_upgrade", upgrade_params("23.05.5-otb.3"))

    async def send_upgrade() -> None:
        await wait_for(lambda: agent.welcomed)
        await ws.send("BOX1", upgrade)

    sender = asyncio.create_task(send_upgrade())
    # when an upgrade command arrives
    await run_until(agent, lambda: len(ws.hellos) >= 2 and agent.welcomed)
    await sender
    # then it reports its stages, reboots (a new boot id) and comes back on the new version
    assert ws.results[0]["ok"] is True and ws.results[0]["output"]["simulated"] is True
    stages = [p["message"].split(":")[0] for p in ws.progress]
    assert stages == ["downloading", "verifying", "installing", "rebooting"]
    first, second = ws.hellos[0], ws.hellos[-1]
    assert second["firmware_version"] == "23.05.5-otb.3" != first["firmware_version"]
    assert second["boot_id"] != first["boot_id"]

    failing = SimulatedSystem(SimulatedCollector("SIM-00043"), upgrade_fails=True, upgrade_stage_delay=0.0)
    progress = Progress(_no_progress, asyncio.get_running_loop().create_task)
    fleet_access = FleetAccess(fake_http.url, "otba_x", None)
    ok, output, error = await failing.firmware_upgrade(
        fleet_access, UpgradeParams(upgrade_params()), current_version="1", progress=progress
    )
    assert (ok, output, error) == (
        False,
        {"code": "apply_failed", "simulated": True},
        "apply_failed: simulated install failure",
    )
    assert not failing.reboot_pending()


async def _no_progress(percent: int, message: str) -> None:
    return None


async def test_a_simulated_speed_test_is_drawn_from_the_simulated_wans() -> None:
    collector = SimulatedCollector("SIM-00007")
    system = SimulatedSystem(collector)
    access = FleetAccess("http://127.0.0.1:9", "otba_x", None)
    moved, duration = await system.speed_test(access, direction="download", nbytes=1000, iface="wan")
    assert moved == 1000 and duration > 0
    with pytest.raises(Exception, match="no network interface named 'wan9'"):
        await system.speed_test(access, direction="upload", nbytes=1000, iface="wan9")
    assert system.speed_test_output() == {"simulated": True}


def test_only_flaky_simulated_boxes_drop_their_link() -> None:
    steady = SimulatedSystem(SimulatedCollector("SIM-1"))
    flaky = SimulatedSystem(SimulatedCollector("SIM-2"), flaky=True)
    assert not any(steady.link_dropped() for _ in range(1000))
    assert any(flaky.link_dropped() for _ in range(1000))


def test_simulated_picks_are_an_exact_fraction() -> None:
    assert sum(simulated_pick(i, 0.05) for i in range(1000)) == 50
    assert not any(simulated_pick(i, 0.0) for i in range(100))


def test_a_simulated_reboot_changes_the_boot_id_at_once_when_stopping() -> None:
    collector = SimulatedCollector("SIM-3")
    system = SimulatedSystem(collector, reboot_delay=30.0)
    before = collector.boot_id()

    async def reboot() -> None:
        stopping = asyncio.Event()
        stopping.set()
        await system.reboot()
        assert system.reboot_pending()
        started = time.monotonic()
        await system.complete_reboot(stopping)
        assert time.monotonic() - started < 1.0

    asyncio.run(reboot())
    assert collector.boot_id() != before and not system.reboot_pending()
