"""Fuzzing (issues #7, #13): schemathesis against ``/openapi.json`` of a live server.

A bounded, seeded run: every operation gets the schema's coverage cases (boundaries,
missing and malformed parameters, other methods) plus ``MAX_EXAMPLES`` generated
positive and negative cases, sent with the admin key. Valid path ids are sometimes
real ones, so the run reaches job and engine logic and not only 404s. Every built-in
check runs, among them: no 5xx; body, content type and status code as documented;
valid data accepted and invalid data refused (the document states what the server
enforces: URL patterns, engine ids, strict fields); 405 with ``Allow`` for a method
an operation does not have. And the status code must be one the operation lists.
Afterwards the server is healthy, stops cleanly on SIGTERM, leaves a state file that
parses, and starts again on it with the same jobs.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    skips_on_unexpected_http_status,
)

from tests.support.server import Server

pytestmark = pytest.mark.e2e

API_KEY = "fuzz-key-0123456789abcdef"
SEED = 20240101
# A second seed, another run: it found gunicorn's HTML 414 to a long query (issue #24).
OTHER_SEED = 20261207
MAX_EXAMPLES = 50
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10.0}
ENGINES = ("fuzz-engine-1", "fuzz-engine-2")
VALID_URL = "http://example.com/fuzz.mp4"
STATE: dict[str, list[str]] = {"job_id": [], "engine_id": list(ENGINES)}
CHOICES = random.Random(SEED)  # which cases get a real id: the same in every run
BUDGET = 180.0  # seconds for the whole module: server start, fuzz, restart


@skips_on_unexpected_http_status
def documented_status_code(ctx: Any, response: Any, case: Any) -> None:
    """The status code is one the operation lists itself. flask-smorest gives every
    operation a ``default`` error response, with which schemathesis's own
    ``status_code_conformance`` lets any code pass.

    Three exceptions: a 401 to a request schemathesis sent without the key (a negative
    case; ``test_openapi_documents_auth_and_storage_errors`` checks the document lists
    401), a 405 to a path id that is not an id (``GET /jobs/{job_id}`` with ``batch``
    is ``GET /jobs/batch``, a POST-only route), and other-method probes (skipped by
    the decorator)."""
    if response.status_code == 401 and response.request.headers.get("X-API-Key") != API_KEY:
        return
    if response.status_code == 405 and _negative_path(case):
        return
    listed = {code for code in case.operation.responses.status_codes if code != "default"}
    if str(response.status_code) not in listed:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code}, which it does not "
            f"document (it lists {', '.join(sorted(listed))})"
        )


def _negative_path(case: Any) -> bool:
    meta = case.meta
    component = meta.components.get(ParameterLocation.PATH) if meta is not None else None
    return component is not None and component.mode == GenerationMode.NEGATIVE


def _populate(server: Server) -> None:
    """Real jobs (pending and assigned) and engines for the run to find."""
    for engine_id in ENGINES:
        response = server.request("POST", "/engines/heartbeat", json={
            "engine_id": engine_id, "supported_codecs": ["h264"], "storage_capacity_gb": 100,
        })
        assert response.status_code == 200, response.text
    for n in range(6):
        response = server.request("POST", "/jobs/", json={**JOB, "priority": n})
        assert response.status_code == 201, response.text
        STATE["job_id"].append(response.json()["job_id"])
    for engine_id in ENGINES:
        response = server.request("POST", "/assign_job/", json={"engine_id": engine_id})
        assert response.status_code == 200, response.text


@schemathesis.hook  # before_call hooks exist in the global scope only
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """Keep a generated path id, or (half the time) put a real one in its place,
    so the run reaches job and engine logic and not only 404s. Only for ids
    generated valid: a negative case must stay negative."""
    if not case.path_parameters or _negative_path(case):
        return
    for name in case.path_parameters:
        if STATE.get(name) and CHOICES.random() < 0.5:
            case.path_parameters[name] = CHOICES.choice(STATE[name])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("fuzz")
    # Valid batches of up to 1000 jobs are generated now: a queue that never fills,
    # so that a 503 can only mean a fault. No throttle of wrong keys: a run sends
    # negative cases from one address, and a block would answer the rest with 429.
    server = Server(workdir, API_KEY, "--state-file", str(workdir / "server_state.json"),
                    "--log-level", "WARNING", "--queue-size", "1000000",
                    "--auth-failure-limit", "0")
    server.started = time.monotonic()  # type: ignore[attr-defined]
    server.start()
    _populate(server)
    yield server
    server.stop()


def _load_schema(server: Server, seed: int) -> Any:
    config = schemathesis.Config.from_dict({
        "seed": seed,
        "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "request-timeout": 10,
    })
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config,
                                         headers=server.headers, timeout=10)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> Any:
    return _load_schema(fuzz_server, SEED)


@pytest.fixture(scope="module")
def api_schema_other_seed(fuzz_server: Server) -> Any:
    return _load_schema(fuzz_server, OTHER_SEED)


schema = schemathesis.pytest.from_fixture("api_schema")
other_seed = schemathesis.pytest.from_fixture("api_schema_other_seed")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schemas read and rewrite ``item._nodeid`` to label each
    operation's subtest; pytest 9 keeps the id elsewhere, so give it one to rewrite."""
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: Any, fuzz_server: Server) -> None:
    """No 5xx; body, content type and status code as the OpenAPI document says."""
    case.call_and_validate(headers=fuzz_server.headers, additional_checks=[documented_status_code],
                           timeout=10)


@other_seed.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented_other_seed(case: Any,
                                                          fuzz_server: Server) -> None:
    """The same with another seed: other cases, the same checks."""
    case.call_and_validate(headers=fuzz_server.headers, additional_checks=[documented_status_code],
                           timeout=10)


def test_server_is_healthy_and_its_state_valid_after_the_fuzz(fuzz_server: Server) -> None:
    """After the run above (pytest keeps the order of a file): /health is 200, SIGTERM
    exits 0, the state file is valid JSON state, and the server starts again on it
    with the same jobs and engines."""
    health = fuzz_server.request("GET", "/health")
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "healthy"
    jobs = fuzz_server.request("GET", "/jobs/", params={"limit": 1}).json()["total"]
    engines = len(fuzz_server.request("GET", "/engines/").json()["engines"])
    assert jobs >= len(STATE["job_id"])
    elapsed = time.monotonic() - fuzz_server.started  # type: ignore[attr-defined]
    assert elapsed < BUDGET, f"the fuzz run took {elapsed:.0f}s"

    assert fuzz_server.proc is not None
    fuzz_server.proc.send_signal(signal.SIGTERM)
    assert fuzz_server.proc.wait(30) == 0, fuzz_server.output()[-3000:]
    state_file = Path(fuzz_server.workdir) / "server_state.json"
    state = orjson.loads(state_file.read_bytes())
    assert isinstance(state["jobs"], dict) and isinstance(state["engines"], dict)
    # GET /jobs/ lists jobs; the state also holds the tasks of chunked ones.
    listed = [job for job in state["jobs"].values() if not job.get("parent_id")]
    assert (len(listed), len(state["engines"])) == (jobs, engines)
    assert "Traceback" not in fuzz_server.output()

    again = Server(fuzz_server.workdir, API_KEY, "--state-file", str(state_file))
    try:
        again.start()
        assert again.request("GET", "/health").status_code == 200
        assert again.request("GET", "/jobs/", params={"limit": 1}).json()["total"] == jobs
        assert len(again.request("GET", "/engines/").json()["engines"]) == engines
        assert again.terminate() == 0
    finally:
        again.stop()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield f"{method.upper()} {path}", operation


def test_openapi_documents_auth_and_storage_errors(client: Any) -> None:
    """Every operation that needs a key lists 401 (no or wrong key) and 403 (a role
    that may not), and every one that changes state lists 503 (the change could not
    be saved): clients and the fuzzer can rely on the list."""
    document = client.get("/openapi.json").get_json()
    default_security = document.get("security", [])
    missing = []
    for label, operation in _operations(document):
        codes = set(operation.get("responses", {}))
        needed = set()
        if operation.get("security", default_security):
            needed |= {"401", "403"}
        if label.split()[0] in ("POST", "DELETE"):
            needed.add("503")
        missing += [f"{label}: {code}" for code in sorted(needed - codes)]
    assert missing == []

