"""Schema fuzzing: schemathesis generates requests from the sidecar's own OpenAPI document
and every answer must be documented, with a body that matches its documented schema, and
never a server error. The public routes are called with an admin's key, the internal ones
with the service token, on SQLite and on PostgreSQL.

Examples are bounded (``MAX_EXAMPLES`` per operation) so the suite stays within minutes;
``SCHEMA_FUZZ_EXAMPLES`` raises it for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from billing.api.app import create_app
from billing.config import LiveKitAccess
from storage.db import make_engine
from storage.models import Role
from storage.recording_files import Keyring
from tests.api_client import SERVICE_HEADERS, Seeder, make_config

MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class FuzzTarget:
    schema: schemathesis.BaseSchema
    admin_headers: dict[str, str]


@pytest.fixture(scope="module")
def fuzz_target(
    shared_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzTarget]:
    engine = make_engine(shared_database_url)
    config = make_config(
        shared_database_url,
        tmp_path_factory.mktemp("fuzz-recordings"),
        rate_limit_webhook_per_ip=1_000_000,
        # every route configured, so each is fuzzed on its real path (not its 503)
        recording_keyring=Keyring({"fuzz": b"k" * 32}, "fuzz"),
        livekit=LiveKitAccess(
            "ws://127.0.0.1:9", "fuzz-key", "fuzz-secret-of-at-least-32-characters"
        ),
    )
    seed = Seeder(engine, config.recordings_dir)
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    agent = seed.agent(org, admin.user_id)
    seed.recording(org, seed.call(org, agent))
    app = create_app(config, engine=engine)
    try:
        yield FuzzTarget(schemathesis.openapi.from_asgi("/openapi.json", app), admin.headers)
    finally:
        engine.dispose()


def _operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    return [result.ok() for result in schema.get_all_operations()]


def _fuzz(
    operation: schemathesis.APIOperation, headers: dict[str, str], mode: GenerationMode
) -> None:
    """Call ``operation`` with up to MAX_EXAMPLES generated cases; raises the failures."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    call()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_answer_is_documented_and_none_is_a_server_error(
    fuzz_target: FuzzTarget, mode: GenerationMode
) -> None:
    failures: list[str] = []
    for operation in _operations(fuzz_target.schema):
        internal = operation.path.startswith("/internal/")
        headers = SERVICE_HEADERS if internal else fuzz_target.admin_headers
        try:
            _fuzz(operation, headers, mode)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters
        except Exception as exc:  # every operation runs; all failures reported at once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
