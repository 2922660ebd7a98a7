"""``manage.py seed_demo``: a demo fleet, idempotent (running it again changes nothing).

Demo Corp (owner demo@example.com), a staff superuser, two regions with two aggregation servers and
address pools each, 20 imported boxes DEMO-0001..DEMO-0020 of which 10 are claimed and provisioned
into Demo Corp (six with WAN policies naming the links their simulated boxes have), one firmware
release (signed with the service's key and published when the service has one: always under ``make
run``), and ``var/demo-boxes.csv`` for the fleet simulator (with each box's links). A policy naming
links the demo box does not have (seeded by an older version) is replaced by the seed's on a re-run.
Everything goes through the services, as an operator would.
"""

from __future__ import annotations

import base64
import csv
import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand

from fleet.core.audit import Actor
from fleet.core.choices import BoxState
from fleet.core.models import Box, Membership, Organization, Region
from fleet.core.services import organization_create, organization_update
from fleet.firmware.choices import ReleaseState
from fleet.firmware.models import Release
from fleet.firmware.services import release_add, release_publish, release_sign, signing_key_configured
from provisioning.models import AddressPool, AggregationServer
from provisioning.services.configuration import box_set_wan_policy
from provisioning.services.infrastructure import pool_create, region_create, server_create
from provisioning.services.inventory import boxes_import
from provisioning.services.lifecycle import box_claim

ORGANIZATION = "Demo Corp"
OWNER_EMAIL, OWNER_PASSWORD = "demo@example.com", "demo-password-1"
STAFF_EMAIL, STAFF_PASSWORD = "staff@example.com", "staff-password-1"
BOX_COUNT, CLAIMED_COUNT = 20, 10
# Newer than what the simulated boxes run (23.05.3-otb.1), so a rollout of it has boxes to upgrade.
DEMO_RELEASE = "24.10.1-otb.1"
MODELS = ("OTB-v2c", "OTB-v2b", "OTB-Plus")  # as the simulated agents report them

REGIONS: list[dict[str, Any]] = [
    {
        "code": "eu-west",
        "name": "Paris",
        "servers": [("agg-par-1", "192.0.2.11"), ("agg-par-2", "192.0.2.12")],
        "public": "198.51.100.0/26",
        "tunnel": "100.64.0.0/24",
        "ipv6": "2001:db8::/44",
    },
    {
        "code": "eu-central",
        "name": "Frankfurt",
        "servers": [("agg-fra-1", "192.0.2.21"), ("agg-fra-2", "192.0.2.22")],
        "public": "203.0.113.0/26",
        "tunnel": "100.64.1.0/24",
        "ipv6": "2001:db8:10::/44",
    },
]

# Each demo site: the box's links (the simulator runs the box with them: the ``wans`` column of
# ``var/demo-boxes.csv``, ``IFACE:KIND`` as docs/agent-protocol.md says) and the WAN policy seeded
# for it, whose interfaces are those same links (mode, role per link, optional speeds in kbit/s).
DEMO_SITES: list[dict[str, Any]] = [
    {
        "links": [("wan", "fiber"), ("wan2", "vdsl"), ("wan3", "lte")],
        "mode": "aggregate",
        "roles": {"wan": "primary", "wan2": "primary", "wan3": "backup"},
        "speeds": {"wan": (1_000_000, 500_000), "wan2": (60_000, 12_000)},
    },
    {
        "links": [("wan", "fiber"), ("wan2", "5g")],
        "mode": "failover",
        "roles": {"wan": "primary", "wan2": "backup"},
        "speeds": {},
    },
    {
        "links": [("wan", "adsl"), ("wan2", "adsl"), ("wan3", "lte")],
        "mode": "load-balance",
        "roles": {"wan": "primary", "wan2": "primary", "wan3": "disabled"},
        "speeds": {"wan": (15_000, 1_000), "wan2": (15_000, 1_000)},
    },
    # Sites without a seeded policy: every link a primary, aggregated.
    {"links": [("wan", "cable"), ("wan2", "lte")]},
    {"links": [("wan", "vdsl"), ("wan2", "vdsl"), ("wan3", "5g")]},
]
POLICY_SITES = 3  # the first sites have a policy: boxes 1..6 get them in turn
POLICY_BOXES = 6


def demo_site(index: int) -> dict[str, Any]:
    """The site of demo box ``index``: boxes 1..6 cycle through the sites with a policy, the others
    through the rest."""
    if index <= POLICY_BOXES:
        return DEMO_SITES[(index - 1) % POLICY_SITES]
    others = DEMO_SITES[POLICY_SITES:]
    return others[index % len(others)]


def demo_links(index: int) -> str:
    """The links of demo box ``index`` as the simulator takes them (``wan:fiber wan2:lte``)."""
    return " ".join(f"{iface}:{kind}" for iface, kind in demo_site(index)["links"])


def demo_policy(index: int) -> dict[str, Any] | None:
    """The WAN policy seeded for demo box ``index`` (None: the box keeps the default), naming its
    links with their kinds."""
    site = demo_site(index)
    if index > POLICY_BOXES or "mode" not in site:
        return None
    interfaces = []
    for iface, kind in site["links"]:
        interface: dict[str, Any] = {"name": iface, "role": site["roles"][iface], "kind": kind}
        if iface in site["speeds"]:
            interface["down_kbps"], interface["up_kbps"] = site["speeds"][iface]
        interfaces.append(interface)
    return {"mode": site["mode"], "interfaces": interfaces}


def demo_box(index: int) -> dict[str, str]:
    """Deterministic factory data of demo box ``index`` (so a re-run finds it unchanged)."""
    serial = f"DEMO-{index:04d}"
    return {
        "serial": serial,
        "model": MODELS[index % len(MODELS)],
        "mac": f"02:0d:e0:00:{index >> 8:02x}:{index & 255:02x}",
        "factory_secret": f"demo-factory-{index:04d}",
        "claim_code": f"demo-claim-{index:04d}",
    }


def fake_wireguard_key(name: str) -> str:
    return base64.b64encode(hashlib.sha256(f"demo-wg:{name}".encode()).digest()).decode()


class Command(BaseCommand):
    help = "Create (or complete) the demo fleet; safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("cli:seed_demo")
        regions = self._infrastructure(actor)
        organization = self._people(actor, regions["eu-west"])
        self._boxes(actor, organization)
        self._release(actor)
        path = self._csv()
        url = settings.OTB["LOCAL_URL"]
        self.stdout.write(
            self.style.SUCCESS("demo fleet ready")
            + f"\n  URL:      {url}"
            + f"\n  customer: {OWNER_EMAIL} / {OWNER_PASSWORD}   ({ORGANIZATION})"
            + f"\n  staff:    {STAFF_EMAIL} / {STAFF_PASSWORD}   ({url}admin/)"
            + f"\n  boxes:    {path} (for otb-agent simulate)"
        )

    def _infrastructure(self, actor: Actor) -> dict[str, Any]:

        regions: dict[str, Any] = {}
        for spec in REGIONS:
            region = Region.objects.filter(code=spec["code"]).first() or region_create(
                actor=actor, code=spec["code"], name=spec["name"]
            )
            regions[spec["code"]] = region
            for name, address in spec["servers"]:
                if not AggregationServer.objects.filter(name=name).exists():
                    server_create(
                        actor=actor,
                        name=name,
                        region=region,
                        hostname=f"{name}.example.net",
                        public_ipv4=address,
                        tunnel_port_min=51820,
                        tunnel_port_max=52819,
                        capacity=500,
                        wg_public_key=fake_wireguard_key(name),
                    )
            for purpose, key in (
                ("public_ipv4", "public"),
                ("tunnel_p2p", "tunnel"),
                ("ipv6_prefix", "ipv6"),
            ):
                pool_name = f"{spec['code']}-{key}"
                if not AddressPool.objects.filter(name=pool_name).exists():
                    pool_create(actor=actor, name=pool_name, cidr=spec[key], purpose=purpose, region=region)
        return regions

    def _people(self, actor: Actor, region: Any) -> Organization:
        users = get_user_model().objects
        staff = users.filter(email__iexact=STAFF_EMAIL).first()
        if staff is None:
            users.create_superuser(username=STAFF_EMAIL, email=STAFF_EMAIL, password=STAFF_PASSWORD)
        organization = Organization.objects.filter(name=ORGANIZATION).first()
        if organization is None:
            organization = organization_create(
                actor=actor, name=ORGANIZATION, owner_email=OWNER_EMAIL, owner_password=OWNER_PASSWORD
            )
        if organization.preferred_region_id is None:
            organization = organization_update(
                actor=actor, organization=organization, preferred_region=region
            )
        assert Membership.objects.filter(organization=organization, user__email__iexact=OWNER_EMAIL).exists()
        return organization

    def _boxes(self, actor: Actor, organization: Organization) -> None:
        report = boxes_import(actor=actor, rows=[demo_box(index) for index in range(1, BOX_COUNT + 1)])
        self.stdout.write(
            f"boxes: {report.created} imported, {report.unchanged} already there, {report.rejected} rejected"
        )
        for error in report.errors:
            self.stdout.write(f"  line {error.line}: {error.serial}: {error.field}: {error.reason}")
        for index in range(1, CLAIMED_COUNT + 1):
            data = demo_box(index)
            box = Box.objects.get(serial=data["serial"])
            policy = demo_policy(index)
            if box.state == BoxState.UNCLAIMED:
                box = box_claim(
                    actor=actor, organization=organization, serial=box.serial, claim_code=data["claim_code"]
                )
            elif not self._names_missing_links(box, index):
                continue  # seeded before, or edited since: kept as it is
            if policy is not None:
                box_set_wan_policy(actor=actor, box=box, **policy)

    def _release(self, actor: Actor) -> None:
        release = Release.objects.filter(version=DEMO_RELEASE).first()
        if release is None:
            # a small deterministic image: the simulated boxes only pretend to flash it
            image = b"".join(hashlib.sha256(f"demo-image:{i}".encode()).digest() for i in range(32768))
            release = release_add(
                actor=actor,
                version=DEMO_RELEASE,
                hardware_models=list(MODELS),
                notes="Demo release: OpenWrt 24.10 with the bonding agent.",
                upload=ContentFile(image, name=f"otb-{DEMO_RELEASE}-sysupgrade.img"),
            )
        if release.state == ReleaseState.DRAFT and signing_key_configured():
            if not release.signature:
                release = release_sign(actor=actor, release=release)
            release = release_publish(actor=actor, release=release)
        if release.state == ReleaseState.DRAFT:
            self.stdout.write(
                f"release: {DEMO_RELEASE} left as a draft (the service has no signing key, "
                "OTB_FIRMWARE_SIGNING_KEY_FILE): sign and publish it in the console's Releases page"
            )
        else:
            self.stdout.write(f"release: {DEMO_RELEASE} {release.state}")

    @staticmethod
    def _names_missing_links(box: Box, index: int) -> bool:
        """Whether the box's policy names links its simulated box does not have (a demo seeded by an
        older version named ``wan1``/``lte0``): such a policy is replaced by the seed's."""
        names = {item.get("name") for item in (box.wan_policy or {}).get("interfaces", [])}
        return bool(names - {iface for iface, _ in demo_site(index)["links"]})

    def _csv(self) -> Path:
        path = Path(settings.VAR_DIR) / "demo-boxes.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["serial", "factory_secret", "claim_code", "wans"])
            for index in range(1, BOX_COUNT + 1):
                data = demo_box(index)
                writer.writerow(
                    [data["serial"], data["factory_secret"], data["claim_code"], demo_links(index)]
                )
        return path
