"""The box page and its fragments: permissions, WAN policy with its waiting state, commands."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from fleet.core.audit import Actor
from fleet.core.models import AuditLog, Box
from fleet.telemetry.models import BoxStatus, WanStatus
from provisioning.models import BoxTunnelStatus
from provisioning.services.configuration import box_config_applied, box_set_wan_policy
from tests.conftest import People

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def box(people: People, claimed_box_factory: Callable[..., Box]) -> Box:
    box = claimed_box_factory(people.org, "ACME-0001")
    now = timezone.now()
    BoxStatus.objects.create(
        box=box, online=True, last_seen_at=now, wans_up=2, wans_total=2, rx_bps=90_000_000
    )
    for iface, label in (("wan0", "Fiber"), ("wan1", "4G")):
        WanStatus.objects.create(
            box=box,
            iface=iface,
            label=label,
            kind="fiber" if iface == "wan0" else "lte",
            up=True,
            rtt_ms=12.5,
            loss_pct=0.1,
            rx_bps=50_000_000,
            tx_bps=5_000_000,
            up_changed_at=now,
            updated_at=now,
        )
    return box


def test_box_page_shows_status_links_network_and_firmware(people, box) -> None:
    response = logged_in(people.viewer).get(f"/boxes/{box.pk}/")
    assert response.status_code == 200
    content = response.content.decode()
    assert "ACME-0001" in content
    assert 'data-iface="wan0"' in content and 'data-iface="wan1"' in content
    assert box.server.name in content
    assert "Public IPv4" in content  # the claimed box got a public address
    assert 'data-ws="/ws/live/"' in content
    assert "uPlot.iife.min.js" in content


def test_free_memory_shows_when_the_box_reports_it(people, box) -> None:
    # given an agent box: no free memory reported, no line for it
    assert 'id="mem-free"' not in logged_in(people.viewer).get(f"/boxes/{box.pk}/").content.decode()
    # when the box reports its free memory (a stock OverTheBox box's os_mem_free, in kB)
    BoxStatus.objects.filter(box=box).update(mem_free_kb=1523400)
    content = logged_in(people.viewer).get(f"/boxes/{box.pk}/").content.decode()
    # then the page shows it as people read it
    assert re.search(r'id="mem-free">1\.5 GiB<', content), content


def test_the_wan_table_names_each_link_once_and_times_have_one_format(people, box) -> None:
    # given the box reports wan0 labelled "Fiber" (a fiber link) and wan1 labelled "4G" (LTE)
    content = logged_in(people.viewer).get(f"/boxes/{box.pk}/").content.decode()
    table = content[
        content.index('id="wan-table"') : content.index("</table>", content.index('id="wan-table"'))
    ]
    # then each link reads "label · interface", not "Fiber Fiber · wan0"
    captions = re.findall(r'<th scope="row">(.*?)</th>', table)
    assert captions == ['Fiber <span class="sub">wan0</span>', '4G <span class="sub">wan1</span>']
    assert re.findall(r'data-role="(\w+)"', table) == ["primary", "primary"]
    # and every date on the page is written one way (the script shows it in the viewer's zone)
    times = re.findall(r"<time datetime=\"[^\"]+\">([^<]*)</time>", content)
    assert times and all(
        re.fullmatch(r"\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}:\d{2} UTC", t) for t in times
    ), times


def test_an_offline_box_shows_its_links_as_unknown_not_up(people, box) -> None:
    # given the box went offline while its links were last reported up with traffic
    BoxStatus.objects.filter(box=box).update(online=False, offline_since=timezone.now())
    content = logged_in(people.viewer).get(f"/boxes/{box.pk}/status/").content.decode()
    table = content[content.index('id="wan-table"') : content.index("</table>")]
    # then no link reads "Up" with figures, each says it is not known, with its last report in the title
    assert ">Up<" not in table and "Mbit/s" not in table and "50000000" not in table
    assert table.count(">Unknown</span>") == 2
    assert "it last reported this link up" in table


def test_another_organisations_box_is_not_found(people, box) -> None:
    client = logged_in(people.outsider)
    for url in (
        f"/boxes/{box.pk}/",
        f"/boxes/{box.pk}/status/",
        f"/boxes/{box.pk}/config-state/",
        f"/boxes/{box.pk}/events/",
        f"/boxes/{box.pk}/commands/",
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/boxes/{box.pk}/policy/", {"mode": "failover"}).status_code == 404
    assert client.get(f"/boxes/{uuid.uuid4()}/").status_code == 404


def test_anonymous_people_are_sent_to_sign_in(box) -> None:
    response = Client().get(f"/boxes/{box.pk}/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_viewer_cannot_change_the_box(people, box) -> None:
    client = logged_in(people.viewer)
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    assert 'id="policy-form"' not in page
    before = dict(box.wan_policy)
    assert client.post(f"/boxes/{box.pk}/policy/", {"mode": "failover"}).status_code == 403
    assert client.post(f"/boxes/{box.pk}/rename/", {"name": "x"}).status_code == 403
    assert (
        client.post(f"/boxes/{box.pk}/commands/new/", {"kind": "reboot", "confirm": "on"}).status_code == 403
    )
    box.refresh_from_db()
    assert box.wan_policy == before and box.name == ""


def test_changing_the_wan_policy_waits_for_the_box_then_shows_applied(people, box) -> None:
    # given the box has applied its current configuration
    box_config_applied(box=box, config_hash=box.config_hash)
    client = logged_in(people.admin)
    assert 'data-state="applied"' in client.get(f"/boxes/{box.pk}/config-state/").content.decode()
    # when the admin switches to failover with the 4G link as backup
    response = client.post(
        f"/boxes/{box.pk}/policy/",
        {"mode": "failover", "role_0": "primary", "role_1": "backup"},
        HTTP_HX_REQUEST="true",
    )
    # then the policy is saved (audited) and the page waits for the box
    assert response.status_code == 200
    assert 'data-state="waiting"' in response.content.decode()
    box.refresh_from_db()
    assert box.wan_policy["mode"] == "failover"
    assert [i["role"] for i in box.wan_policy["interfaces"]] == ["primary", "backup"]
    assert AuditLog.objects.filter(action="box.set_wan_policy", box=box).exists()
    waiting = client.get(f"/boxes/{box.pk}/config-state/").content.decode()
    assert 'data-state="waiting"' in waiting and "every 2s" in waiting
    # when the box reports it applied the new hash
    box_config_applied(box=box, config_hash=box.config_hash)
    # then the waiting state clears (and polling stops)
    applied = client.get(f"/boxes/{box.pk}/config-state/").content.decode()
    assert 'data-state="applied"' in applied and "every 2s" not in applied


def test_the_wan_policy_form_sets_and_lifts_the_box_rate_limits(people, box) -> None:
    client = logged_in(people.admin)
    form = {"mode": "aggregate", "role_0": "primary", "role_1": "backup"}
    # when the admin sets a download limit
    response = client.post(
        f"/boxes/{box.pk}/policy/", {**form, "download_kbps": "40000"}, HTTP_HX_REQUEST="true"
    )
    # then it is stored and the form shows it back
    assert response.status_code == 200
    box.refresh_from_db()
    assert box.wan_policy["download_kbps"] == 40000 and "upload_kbps" not in box.wan_policy
    assert 'name="download_kbps" value="40000"' in client.get(f"/boxes/{box.pk}/").content.decode()
    # a bad value names the field; an empty one lifts the limit
    bad = client.post(f"/boxes/{box.pk}/policy/", {**form, "upload_kbps": "0"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 400 and "upload_kbps" in bad.content.decode()
    client.post(f"/boxes/{box.pk}/policy/", {**form, "download_kbps": ""}, HTTP_HX_REQUEST="true")
    box.refresh_from_db()
    assert "download_kbps" not in box.wan_policy


def test_the_box_page_shows_the_tunnel_as_its_server_sees_it(people, box) -> None:
    client = logged_in(people.viewer)
    assert "has not reported this box" in client.get(f"/boxes/{box.pk}/").content.decode()
    BoxTunnelStatus.objects.create(
        box=box,
        server=box.server,
        reported_at=timezone.now(),
        rx_bytes=10,
        tx_bytes=20,
        rx_bps=2_500_000,
        tx_bps=48_000_000,
        connections=17,
        handshake_age_s=42,
    )
    content = client.get(f"/boxes/{box.pk}/").content.decode()
    assert "Tunnel at the server" in content
    assert "48.0 Mbit/s" in content and "2.5 Mbit/s" in content
    assert "<dd>17</dd>" in content and "42 s ago" in content and box.server.name in content


def test_the_policy_editor_shows_the_box_links_and_flags_those_it_does_not_report(people, box) -> None:
    # given a policy naming a link the box reports (wan0), one it does not (lte0) and a disabled one
    # (wan9: a disabled link is not monitored, so not reported either); the box also reports wan1
    box_set_wan_policy(
        actor=Actor.system("test"),
        box=box,
        mode="failover",
        interfaces=[
            {"name": "wan0", "role": "primary", "kind": "fiber"},
            {"name": "lte0", "role": "backup", "kind": "lte"},
            {"name": "wan9", "role": "disabled", "kind": "adsl"},
        ],
    )
    box_config_applied(box=box, config_hash=Box.objects.get(pk=box.pk).config_hash)
    client = logged_in(people.admin)
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    # then the editor lists the policy's links in order, then the box's link it does not name yet
    form = page[page.index('id="policy-form"') :]
    rows = re.findall(r'data-link="([^"]+)" data-reported="(\w+)"', form)
    assert rows == [("wan0", "yes"), ("lte0", "no"), ("wan9", "disabled"), ("wan1", "yes")]
    # and it flags lte0, which the box does not report, with a way to remove it
    lte0 = form[form.index('data-link="lte0"') : form.index('data-link="wan9"')]
    assert "Not reported by the box" in lte0 and 'name="forget_1"' in lte0
    assert "Not reported by the box" not in form[form.index('data-link="wan9"') :]
    # and the configuration state says the box applied it, but not for lte0
    state = client.get(f"/boxes/{box.pk}/config-state/").content.decode()
    assert 'data-state="applied"' in state and 'data-state="unreported"' in state and "lte0" in state
    # when the admin removes lte0 from the policy and saves
    response = client.post(
        f"/boxes/{box.pk}/policy/",
        {"mode": "failover", "role_0": "primary", "role_1": "backup", "forget_1": "on", "role_2": "disabled",
         "role_3": "backup"},
        HTTP_HX_REQUEST="true",
    )  # fmt: skip
    assert response.status_code == 200, response.content.decode()
    box.refresh_from_db()
    # then the policy keeps the others, with the kind the box reports for wan1
    assert [(i["name"], i["role"], i["kind"]) for i in box.wan_policy["interfaces"]] == [
        ("wan0", "primary", "fiber"),
        ("wan9", "disabled", "adsl"),
        ("wan1", "backup", "lte"),
    ]


def test_an_invalid_wan_policy_is_refused_with_the_field(people, box) -> None:
    client = logged_in(people.admin)
    response = client.post(
        f"/boxes/{box.pk}/policy/",
        {"mode": "failover", "role_0": "backup", "role_1": "disabled"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 400
    # the refusal is a sentence, shown with the links' roles
    assert re.search(
        r'id="policy-roles-errors"[^>]*><li>Failover needs at least one link set to Primary',
        response.content.decode(),
    )
    box.refresh_from_db()
    assert box.wan_policy.get("mode") != "failover"
    bogus = client.post(f"/boxes/{box.pk}/policy/", {"mode": "warp-drive"}, HTTP_HX_REQUEST="true")
    assert bogus.status_code == 400 and "mode" in bogus.content.decode()


def test_rename_and_send_a_command(people, box) -> None:
    client = logged_in(people.admin)
    response = client.post(f"/boxes/{box.pk}/rename/", {"name": "Paris office", "tags": "paris, hq"})
    assert response.status_code == 302
    box.refresh_from_db()
    assert box.name == "Paris office" and box.tags == ["paris", "hq"]
    response = client.post(f"/boxes/{box.pk}/commands/new/", {"kind": "diagnostics"})
    assert response.status_code == 302
    fragment = client.get(f"/boxes/{box.pk}/commands/").content.decode()
    assert "Diagnostics" in fragment and "Pending" in fragment
    assert "every 3s" in fragment  # it keeps polling while the command is open


def test_commands_show_their_state(people, box) -> None:
    from fleet.commands.choices import CommandKind, CommandState
    from fleet.commands.models import Command

    # given commands in every kind of end, and one running
    now = timezone.now()
    for kind, state, progress in (
        (CommandKind.REBOOT, CommandState.SUCCEEDED, 100),
        (CommandKind.DIAGNOSTICS, CommandState.EXPIRED, 0),
        (CommandKind.REFRESH_CONFIG, CommandState.CANCELLED, 0),
        (CommandKind.SPEED_TEST, CommandState.RUNNING, 40),
    ):
        Command.objects.create(
            box=box,
            organization=people.org,
            kind=kind,
            state=state,
            progress=progress,
            progress_message="measuring" if state == CommandState.RUNNING else "",
            expires_at=now,
        )
    # when the commands fragment is shown
    fragment = logged_in(people.viewer).get(f"/boxes/{box.pk}/commands/").content.decode()
    # then each state has its badge, the running one its progress, and the list keeps polling
    assert '<span class="badge ok">Succeeded</span>' in fragment
    assert '<span class="badge bad">Expired</span>' in fragment
    assert '<span class="badge">Cancelled</span>' in fragment
    assert '<span class="badge warn">Running 40 %</span>' in fragment
    assert "measuring" in fragment and "every 3s" in fragment


def test_a_speed_test_through_one_wan_in_both_directions(people, box) -> None:
    from fleet.commands.models import Command

    client = logged_in(people.admin)
    # the page offers the box's WANs by label
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    assert 'value="wan1">4G (wan1)</option>' in page and 'value="both"' in page
    # a speed test through the 4G link, both ways
    response = client.post(
        f"/boxes/{box.pk}/commands/new/", {"kind": "speed_test", "direction": "both", "iface": "wan1"}
    )
    assert response.status_code == 302
    command = Command.objects.get(box=box)
    assert command.kind == "speed_test"
    assert command.params["direction"] == "both" and command.params["iface"] == "wan1"
    # an interface the box does not have is refused, and nothing is sent
    client.post(f"/boxes/{box.pk}/commands/new/", {"kind": "speed_test", "iface": "wan9"})
    assert Command.objects.filter(box=box).count() == 1
    # other commands ignore the speed-test options
    client.post(
        f"/boxes/{box.pk}/commands/new/",
        {"kind": "reboot", "confirm": "on", "direction": "upload", "iface": "wan1"},
    )
    reboot = Command.objects.get(box=box, kind="reboot")
    assert "direction" not in reboot.params and "iface" not in reboot.params


def test_events_fragment_lists_the_timeline(people, box) -> None:
    from fleet.core.events import event_record

    event_record(box_id=box.pk, kind="wan_down", data={"iface": "wan1"})
    content = logged_in(people.viewer).get(f"/boxes/{box.pk}/events/").content.decode()
    assert "WAN down" in content and "wan1" in content


def test_no_command_is_chosen_in_advance_and_a_disruptive_one_needs_confirming(people, box) -> None:
    from fleet.commands.models import Command

    client = logged_in(people.admin)
    url = f"/boxes/{box.pk}/commands/new/"
    # the menu starts on "Choose a command…", not on reboot
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    assert re.search(r'<option value="" selected>Choose a command…</option>', page)
    # sending nothing says so next to the menu
    empty = client.post(url, {"kind": ""}, HTTP_HX_REQUEST="true")
    assert empty.status_code == 400
    assert re.search(
        r'id="id_command_kind-errors"[^>]*><li>Choose the command to send\.', empty.content.decode()
    )
    # a reboot without the confirmation (a replayed or scripted request) is refused, next to it
    for kind, says in (("reboot", "Reboot restarts the box"), ("restart_services", "Restarting services")):
        refused = client.post(url, {"kind": kind}, HTTP_HX_REQUEST="true")
        assert refused.status_code == 400
        assert re.search(rf'id="id_command_confirm-errors"[^>]*><li>{says}', refused.content.decode())
        # without script too: back to the page, with the reason
        plain = client.post(url, {"kind": kind}, follow=True)
        assert "Tick the box to confirm" in plain.content.decode()
    assert not Command.objects.filter(box=box).exists()
    # confirmed, it is sent, and the list below the form shows it at once (out of band)
    sent = client.post(url, {"kind": "reboot", "confirm": "on"}, HTTP_HX_REQUEST="true")
    assert sent.status_code == 200
    content = sent.content.decode()
    assert f"Reboot sent to {box.serial}." in content and 'id="commands-list" hx-swap-oob="true"' in content
    assert Command.objects.get(box=box).kind == "reboot"
    # a command that interrupts nothing needs no confirmation
    assert client.post(url, {"kind": "diagnostics"}, HTTP_HX_REQUEST="true").status_code == 200


def test_command_errors_name_the_field_by_its_label_in_sentences(people, box) -> None:
    client = logged_in(people.admin)
    url = f"/boxes/{box.pk}/commands/new/"
    # with script: next to the field
    refused = client.post(url, {"kind": "speed_test", "iface": "wan9"}, HTTP_HX_REQUEST="true")
    assert re.search(
        r"id=\"id_command_iface-errors\"[^>]*><li>Choose one of the box&#x27;s links from the list",
        refused.content.decode(),
    )
    # without script: in the message, after the field's label (never "iface: Select a valid choice")
    plain = client.post(url, {"kind": "speed_test", "iface": "wan9"}, follow=True).content.decode()
    assert "Not sent. Through: Choose one of the box&#x27;s links from the list" in plain
    assert "iface:" not in plain


def test_upgrade_now_restarts_the_box_only_once_confirmed(people, box) -> None:
    from fleet.firmware.models import Upgrade
    from tests.fleet.firmware.firmware_helpers import make_release

    make_release("9.0.0")
    client = logged_in(people.admin)
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    assert "Yes, restart the box to install 9.0.0 now" in page
    url = f"/boxes/{box.pk}/firmware/upgrade/"
    refused = client.post(url, {}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 400
    assert re.search(
        r'id="id_upgrade_confirm-errors"[^>]*><li>Installing 9\.0\.0 restarts the box',
        refused.content.decode(),
    )
    assert not Upgrade.objects.filter(box=box).exists()
    done = client.post(url, {"confirm": "on"}, HTTP_HX_REQUEST="true")
    assert done.status_code == 200 and "Upgrade to 9.0.0 sent" in done.content.decode()
    assert Upgrade.objects.get(box=box).release.version == "9.0.0"


def test_the_maintenance_window_is_edited_on_the_box_page(people, box) -> None:
    from fleet.firmware.models import BoxUpgradePolicy

    client = logged_in(people.admin)
    url = f"/boxes/{box.pk}/firmware/"
    # the page shows the window, every night 02:00-05:00 by default
    page = client.get(f"/boxes/{box.pk}/").content.decode()
    assert "02:00\N{EN DASH}05:00, every day" in page and 'name="window_start"' in page
    # no day and an impossible hour: each field says so, nothing is saved
    refused = client.post(
        url, {"window_start": "25:00", "window_end": "05:00", "auto_upgrade": "on"}, HTTP_HX_REQUEST="true"
    )
    assert refused.status_code == 400
    content = refused.content.decode()
    assert re.search(
        r'id="id_window_start-errors"[^>]*><li>Give the time the window starts as hours', content
    )
    refused = client.post(url, {"window_start": "01:00", "window_end": "04:00"}, HTTP_HX_REQUEST="true")
    assert re.search(r'id="id_window_days-errors"[^>]*><li>Choose at least one day', refused.content.decode())
    assert not BoxUpgradePolicy.objects.filter(box=box).exists()
    # a weekend window from 23:30 past midnight is saved, and shown
    saved = client.post(
        url,
        {"window_days": ["5", "6"], "window_start": "23:30", "window_end": "03:00", "auto_upgrade": "on"},
        HTTP_HX_REQUEST="true",
    )
    assert saved.status_code == 200 and "23:30\N{EN DASH}03:00, Sat, Sun" in saved.content.decode()
    policy = BoxUpgradePolicy.objects.get(box=box)
    assert policy.window_days == [5, 6] and policy.window_start.strftime("%H:%M") == "23:30"
