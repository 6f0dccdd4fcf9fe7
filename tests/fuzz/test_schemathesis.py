"""schemathesis against the app's own OpenAPI document: every operation, as a user and as an admin, with
real ids of their own and of another user's resources mixed into what it generates. Every response
must be no server error, have a status the operation declares (itself, not through `default`), the
declared content type, and a body and headers that match the declared schema.

A bounded, derandomized run (the same examples every time): FUZZ_EXAMPLES examples per operation and
persona (default 10: 536 requests, 35 to 65 s under pytest on a 2-core machine, quiet or busy).
The longer run of docs/RELIABILITY.md ("Fuzzing") is this test with FUZZ_EXAMPLES=100.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fuzz.checks import CHECKS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
# Argon2 on purpose: every login (unknown emails too, so timing reveals nothing) and every account
# registered costs about a second here, so these get a tenth of the examples (at least 3).
SLOW = {"POST /auth/login", "POST /auth/register"}
# Amounts that can succeed, so transfers and adjustments reach the ledger and not only the validator.
AMOUNTS = ("0.01", "1.00", "5", "999999999")


def _with_real_ids(case, data, world, persona: str) -> None:
    """Swap generated ids for real ones (most of the time): the persona's own, another user's, any."""
    for name in list(case.path_parameters or {}):
        if name in world.ids:
            case.path_parameters[name] = data.draw(st.sampled_from(world.ids[name] + [case.path_parameters[name]]),
                                                   label=name)
    if isinstance(case.body, dict):
        for name, ids in world.body_ids[persona].items():
            if name in case.body:
                case.body[name] = data.draw(st.sampled_from(ids + [case.body[name]]), label=name)
        if "amount" in case.body:
            case.body["amount"] = data.draw(st.sampled_from(AMOUNTS + (case.body["amount"],)), label="amount")
        if "email" in case.body and data.draw(st.booleans(), label="real email"):
            case.body["email"] = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"


def _fuzz(operation, world, persona: str) -> Counter:
    """Run the operation's examples; the statuses answered, counted."""
    statuses: Counter = Counter()
    declared = set(operation.definition.raw["responses"]) - {"default"}
    examples = max(3, EXAMPLES // 10) if operation.label in SLOW else EXAMPLES

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time; the failure is shown as is
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    @given(case=operation.as_strategy(), data=st.data())
    def run(case, data):
        _with_real_ids(case, data, world, persona)
        refresh = operation.path in ("/auth/refresh", "/auth/logout") and data.draw(st.booleans(), label="refresh")
        headers = world.headers(persona, refresh=refresh)
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        # `default` (kept for the unexpected 500) would let any status conform: the answer must be declared.
        assert str(response.status_code) in declared, \
            f"{operation.label}: {response.status_code} not in {sorted(declared)}:\n{case.as_curl_command()}"
        if operation.path == "/auth/refresh" and response.status_code == 200:
            world.tokens[persona]["refresh"] = response.json()["refresh_token"]  # rotated: keep the live one

    run()
    return statuses


@pytest.mark.parametrize("persona", ["user", "admin"])
def test_every_operation_keeps_to_the_published_document(fuzz_app, world, persona):
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzz_app)
    failures, calls, started = [], 0, time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:
        began, statuses, answered = time.monotonic(), Counter(), "FAILED"
        try:
            statuses = _fuzz(operation, world, persona)
            answered = " ".join(f"{code}x{count}" for code, count in sorted(statuses.items()))
        except (Exception, BaseExceptionGroup) as exc:  # one operation's failure must not hide the others'
            # (schemathesis reports its check failures as a FailureGroup, a BaseExceptionGroup)
            failures.append(f"{operation.label}:\n{exc}")
        calls += statuses.total()
        print(f"{operation.label:42} {statuses.total():4} calls {time.monotonic() - began:5.1f}s  {answered}")
    print(f"fuzzed {len(operations)} operations as {persona}: {calls} calls in {time.monotonic() - started:.1f}s")
    assert not failures, "\n\n".join(failures)
