"""Schema-driven fuzzing of the whole REST API (issue #14): schemathesis generates requests from the
OpenAPI schema the server serves, valid ones and invalid ones, and sends them over HTTP to the real
server process (uvicorn serving config.asgi, as in production) with an agent token, an
aggregation server's token, a user (owner) token and a staff token. Every answer must be no server
error, carry a status the schema declares for the operation, and match the declared content type,
headers and body; invalid data must be refused (4xx), and an operation that declares a credential
must refuse a request without one.

The run is bounded and repeatable: a fixed seed (hypothesis derandomised), a fixed number of examples
per operation, generation mode and token, no example database and no shrinking. Part of the examples
of an operation with path parameters name objects that exist (boxes, organisations, a release, a
rollout, an upgrade, a command, alert rules ...), so the fuzzing reaches past the 404s into the
handlers. Every problem is collected (one per operation and kind) and reported at the end with a
curl command that reproduces it."""

from __future__ import annotations

import contextlib
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fleet.commands.services import command_create
from fleet.core.audit import Actor
from fleet.core.choices import Role
from fleet.core.models import ApiToken, Membership, Organization
from fleet.core.services import enrollment_token_create
from fleet.core.tokens import digest
from fleet.firmware.services import box_upgrade_now, rollout_create
from fleet.monitoring.services import alert_rule_create, notification_target_create
from tests.conftest import People
from tests.e2e.browser import LiveServer, asgi_server_start, asgi_server_stop
from tests.fleet.firmware.firmware_helpers import make_release

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SEED = 1414
# Examples per operation, generation mode and token (about 90 operations x 4 tokens, the server's token
# refused by all but its two): under two minutes of fuzzing on two cores. Raise them locally for a longer
# hunt (seeds 2718 and 3141 at 25/40 were clean too).
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 16}
PROBE = 3  # valid cases that tell whether the caller may use the operation at all
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]
CALLERS = ("agent", "server", "user", "staff")  # machines first: the staff may revoke their tokens


@dataclass(frozen=True)
class Finding:
    caller: str
    operation: str
    status: int
    problem: str
    reproduce: str

    def __str__(self) -> str:
        return f"[{self.caller}] {self.operation} -> {self.status}: {self.problem}\n    {self.reproduce}"


@dataclass
class FuzzWorld:
    base_url: str
    tokens: dict[str, str]
    # Ids of existing objects per path parameter name.
    ids: dict[str, list[str]]


def existing_path_ids(world: FuzzWorld, operation: Any) -> list[dict[str, str]]:
    """Combinations of existing ids for the operation's path parameters (none if one has no ids)."""
    names = [parameter.name for parameter in operation.path_parameters]
    if not names or any(not world.ids.get(name) for name in names):
        return []
    rng = random.Random(f"{SEED}:{operation.label}")
    return [{name: rng.choice(world.ids[name]) for name in names} for _ in range(6)]


def case_strategy(operation: Any, mode: GenerationMode, known: list[dict[str, str]]) -> Any:
    """Cases of the operation; with existing ids, three in four name existing objects."""
    generated = operation.as_strategy(generation_mode=mode)
    if not known:
        return generated
    existing = st.sampled_from(known).flatmap(
        lambda ids: operation.as_strategy(generation_mode=mode, path_parameters=ids)
    )
    return st.sampled_from([True, True, True, False]).flatmap(lambda use: existing if use else generated)


def problems_of(failure: BaseException) -> list[str]:
    """The failed checks of one response, one line each."""
    if isinstance(failure, BaseExceptionGroup):
        return [line for inner in failure.exceptions for line in problems_of(inner)]
    title = getattr(failure, "title", "") or type(failure).__name__
    message = " ".join(str(getattr(failure, "message", "") or failure).split())
    return [f"{title}: {message[:400]}"]


class Fuzzer:
    """Sends generated cases of every operation with one caller's token and keeps what failed."""

    def __init__(self, world: FuzzWorld, caller: str) -> None:
        self.world = world
        self.caller = caller
        self.session = requests.Session()
        self.headers = {"Authorization": f"Bearer {world.tokens[caller]}"}
        self.findings: dict[tuple[str, str], Finding] = {}

    def send(self, operation: Any, strategy: Any, examples: int, run_seed: str) -> list[int]:
        """``examples`` cases from ``strategy``, each sent and checked; the statuses answered."""
        statuses: list[int] = []

        @seed(zlib.crc32(f"{SEED}:{self.caller}:{operation.label}:{run_seed}".encode()))
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            response = case.call(base_url=self.world.base_url, session=self.session, headers=self.headers)
            statuses.append(response.status_code)
            try:
                case.validate_response(response, checks=CHECKS, headers=self.headers)
            except BaseException as failure:  # a FailureGroup: record each failed check, go on
                for problem in problems_of(failure):
                    key = (operation.label, f"{response.status_code} {problem[:60]}")
                    if key not in self.findings:
                        reproduce = case.as_curl_command(self.headers)
                        self.findings[key] = Finding(
                            self.caller, operation.label, response.status_code, problem, reproduce
                        )

        with contextlib.suppress(Unsatisfiable):  # nothing to make invalid: no negative cases
            run()
        return statuses

    def fuzz(self, schema: Any) -> list[Finding]:
        """Every operation of the schema. A few valid cases first: when the caller is refused every
        time (a token of the wrong kind), the rest of the budget goes to operations it may use."""
        for result in schema.get_all_operations():
            operation = result.ok()
            known = existing_path_ids(self.world, operation)
            positive = case_strategy(operation, GenerationMode.POSITIVE, known)
            probe = self.send(operation, positive, PROBE, "probe")
            if all(status in (401, 403) for status in probe):
                continue
            self.send(operation, positive, EXAMPLES[GenerationMode.POSITIVE] - PROBE, "positive")
            negative = case_strategy(operation, GenerationMode.NEGATIVE, known)
            self.send(operation, negative, EXAMPLES[GenerationMode.NEGATIVE], "negative")
        return list(self.findings.values())


@pytest.fixture(scope="module")
def fuzz_server(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The production server process; its two request threads keep their database connections
    (a connection per request would make each call cost a PostgreSQL login)."""
    log_path: Path = tmp_path_factory.mktemp("fuzz") / "uvicorn.log"
    server = asgi_server_start(log_path, {"DATABASE_CONN_MAX_AGE": "600", "OTB_HTTP_THREADS": "2"})
    yield server
    asgi_server_stop(server)


@pytest.fixture
def world(
    fuzz_server: LiveServer,
    people: People,
    claimed_box_factory: Callable[..., Any],
    box_factory: Callable[..., Any],
    agent_token_factory: Callable[[Any], str],
    api_token_factory: Callable[..., str],
    provisioned_region: Any,
) -> FuzzWorld:
    system = Actor.system("fuzz")
    agent_box = claimed_box_factory(people.org)
    spare = claimed_box_factory(people.org)
    foreign = claimed_box_factory(people.other_org)
    unclaimed = box_factory()
    support = Organization.objects.create(name="Support", slug="support")
    Membership.objects.create(user=people.staff, organization=support, role=Role.OWNER)
    tokens = {
        "agent": agent_token_factory(agent_box),
        "server": provisioned_region.server_token,  # an aggregation server (peers, gateway report)
        "user": api_token_factory(people.owner, people.org),
        "staff": api_token_factory(people.staff, support),
    }
    # objects the requests may name (never the callers' own tokens: revoking one would end its run)
    spare_token = api_token_factory(people.owner, people.org)
    enrollment, _ = enrollment_token_create(
        actor=system, organization=people.org, name="fuzz", expires_in_hours=24, single_use=False
    )
    draft = make_release("9.0.0", publish=False)
    release = make_release("9.1.0")
    rollout = rollout_create(actor=system, release=release, name="fuzz rollout")
    upgrade = box_upgrade_now(actor=system, box=spare, release=release)
    command = command_create(actor=system, box=spare, kind="reboot")
    target, _ = notification_target_create(
        actor=system, organization=people.org, name="NOC", kind="email", email="noc@example.com"
    )
    rule = alert_rule_create(
        actor=system, organization=people.org, name="Offline", kind="box_offline", target_ids=[target.pk]
    )
    viewer = Membership.objects.get(user=people.viewer, organization=people.org)
    organizations = [str(people.org.pk), str(people.other_org.pk)]
    ids = {
        "box_id": [str(box.pk) for box in (agent_box, spare, foreign, unclaimed)],
        "organization_id": organizations,
        "org_id": organizations,
        "server_id": [str(provisioned_region.server.pk)],
        "pool_id": [str(pool.pk) for pool in provisioned_region.pools.values()],
        "release_id": [str(draft.pk), str(release.pk)],
        "rollout_id": [str(rollout.pk)],
        "upgrade_id": [str(upgrade.pk)],
        "command_id": [str(command.pk)],
        "rule_id": [str(rule.pk)],
        "target_id": [str(target.pk)],
        "membership_id": [str(viewer.pk)],
        "token_id": [str(enrollment.pk), str(ApiToken.objects.get(token_hash=digest(spare_token)).pk)],
    }
    return FuzzWorld(base_url=fuzz_server.url, tokens=tokens, ids=ids)


@pytest.mark.timeout(900)
def test_the_api_answers_every_generated_request_as_its_schema_says(world: FuzzWorld) -> None:
    staff = {"Authorization": f"Bearer {world.tokens['staff']}"}
    schema = schemathesis.openapi.from_url(f"{world.base_url}/api/schema/?format=json", headers=staff)
    # each caller's own token is sent; generated (invalid) credentials would only mask the cases
    schema.config.generation.update(with_security_parameters=False)
    findings = [finding for caller in CALLERS for finding in Fuzzer(world, caller).fuzz(schema)]
    assert findings == [], f"{len(findings)} problems:\n" + "\n".join(str(finding) for finding in findings)
