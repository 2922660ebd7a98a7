"""People and factory data of the lab, through the backend's own services (as its commands do):
an operator with a staff token, a customer organisation with an owner's token, and boxes imported
into the inventory as a factory file would bring them. Everything else the lab does goes through
the HTTP API.

``python -m netlab.bootstrap BOXES`` prints one JSON object (tokens and the boxes' factory data).
"""

from __future__ import annotations

import json
import os
import secrets
import sys

import django


def bootstrap(boxes: int) -> dict:
    from django.contrib.auth import get_user_model

    from fleet.core.audit import Actor
    from fleet.core.models import Organization
    from fleet.core.services.organizations import organization_create
    from fleet.core.services.tokens import api_token_create
    from provisioning.services.inventory import boxes_import

    system = Actor.system("lab")
    run = secrets.token_hex(3)
    operator = organization_create(
        actor=system, name=f"Lab operator {run}", owner_email=f"staff-{run}@lab.test"
    )
    customer = organization_create(
        actor=system, name=f"Lab customer {run}", owner_email=f"owner-{run}@lab.test"
    )
    user_model = get_user_model()
    staff = user_model.objects.get(email=f"staff-{run}@lab.test")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    owner = user_model.objects.get(email=f"owner-{run}@lab.test")
    _, staff_token = api_token_create(actor=system, user=staff, organization=operator, name="lab")
    _, owner_token = api_token_create(
        actor=system, user=owner, organization=Organization.objects.get(pk=customer.pk), name="lab"
    )
    rows = [
        {
            "serial": f"LAB-{run}-{index:02d}".upper(),
            "model": "lab-linux",
            "mac": f"02:00:5e:{int(run[:2], 16):02x}:{int(run[2:4], 16):02x}:{index:02x}",
            "factory_secret": secrets.token_urlsafe(24),
            "claim_code": secrets.token_hex(4).upper(),
        }
        for index in range(1, boxes + 1)
    ]
    report = boxes_import(actor=system, rows=iter(rows))
    if report.errors:
        raise SystemExit(f"import failed: {report.errors}")
    return {
        "staff_token": staff_token,
        "owner_token": owner_token,
        "organization": str(customer.pk),
        "boxes": rows,
    }


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    django.setup()
    print(json.dumps(bootstrap(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))


if __name__ == "__main__":
    main()
