"""Several real ``dispatch-server`` instances (gunicorn, several workers each) on one
PostgreSQL database: engines racing for jobs, idempotent submissions through
different instances, an instance killed with SIGKILL, PostgreSQL stopped under load."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import requests

from tests.support.helpers import metric_families, metric_value, poll
from tests.support.postgres import PostgresServer
from tests.support.server import Server

pytestmark = pytest.mark.e2e

KEY = "farm-key-0123456789abcdef"
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10.0}


@pytest.fixture
def farm(postgres: PostgresServer, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start instances on the (emptied) session database, each in a folder of its own
    as on a machine of its own; all killed at the end."""
    postgres.reset()
    servers: list[Server] = []

    def start(*args: str, workers: int = 4, **env: str) -> Server:
        folder = tmp_path / f"instance-{len(servers)}"
        folder.mkdir()
        server = Server(folder, KEY, "--database-url", postgres.url,
                        "--workers", str(workers), "--threads", "8", *args,
                        env={"DISTCONV_LEADER_LEASE": "1", **env})
        servers.append(server)
        server.start(timeout=60)
        # /health answers once the first worker serves; the others may still be
        # loading the app. Tests that count workers, or stop the database, need all.
        poll(lambda: server.output().count("dispatch-server ready") >= workers, 60,
             f"{workers} workers ready")
        return server

    yield start
    for server in servers:
        server.stop()


def rows(postgres: PostgresServer, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(postgres.url) as conn:
        return conn.execute(query, params).fetchall()


def leader(postgres: PostgresServer) -> str | None:
    found = rows(postgres, "SELECT holder FROM leases WHERE expires_at > clock_timestamp()")
    return found[0][0] if found else None


def instance_of(holder: str, servers: list[Server]) -> Server:
    """The server whose worker holds the lease (the holder names the worker's pid)."""
    pid = int(holder.split(":")[1])
    parent = int(next(line.split()[1] for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines()
                      if line.startswith("PPid:")))
    return next(s for s in servers if s.proc is not None and s.proc.pid == parent)


def test_engines_racing_over_two_instances_complete_each_job_once(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    """Two instances of 4 workers, 8 engines asking both in turn, 500 jobs: each job
    completed exactly once, no engine ever holding two, /stats equal to the rows."""
    a, b = farm(), farm()
    for n in range(5):
        batch = [{**JOB, "priority": n % 3} for _ in range(100)]
        assert 201 == (a if n % 2 else b).request("POST", "/jobs/batch",
                                                  json={"jobs": batch}).status_code
    completed: list[str] = []
    problems: list[str] = []

    def engine(index: int) -> None:
        engine_id = f"engine-{index}"
        servers = [a, b] if index % 2 else [b, a]
        session = requests.Session()
        turn = 0
        assert 200 == session.post(servers[0].url + "/engines/heartbeat", headers=a.headers,
                                   json={"engine_id": engine_id}, timeout=10).status_code
        while True:
            server = servers[turn % 2]
            turn += 1
            got = session.post(server.url + "/assign_job/", headers=a.headers,
                               json={"engine_id": engine_id}, timeout=10)
            if got.status_code == 204:
                return
            if got.status_code != 200:
                problems.append(f"assign: {got.status_code} {got.text}")
                return
            job = got.json()
            done = session.post(servers[turn % 2].url + f"/jobs/{job['job_id']}/complete",
                                headers=a.headers, timeout=10, json={
                                    "output_url": "http://example.com/out.mp4",
                                    "engine_id": engine_id, "attempt": job["attempt"]})
            if done.status_code != 200:
                problems.append(f"complete: {done.status_code} {done.text}")
                return
            completed.append(job["job_id"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(engine, range(8)))
    assert [] == problems
    assert 500 == len(completed) == len(set(completed))

    stats = [s.request("GET", "/stats").json()["jobs"] for s in (a, b)]
    counted = dict(rows(postgres, "SELECT status, count(*) FROM jobs GROUP BY status"))
    assert {"completed": 500} == counted
    for jobs in stats:
        assert 500 == jobs["total"] == jobs["completed"]
        assert 0 == jobs["pending"] + jobs["assigned"] + jobs["processing"]
    # Each job assigned once and completed once; an engine's jobs one after another.
    events = rows(postgres, "SELECT job_id, events FROM jobs")
    spans: dict[str, list[tuple[float, float]]] = {}
    for job_id, encoded in events:
        kinds = Counter(event[1] for event in orjson.loads(encoded))
        assert (1, 1) == (kinds["assigned"], kinds["completed"]), job_id
    for record, in rows(postgres, "SELECT record FROM jobs"):
        spans.setdefault(record["assigned_engine"], []).append(
            (record["assigned_at"], record["completed_at"]))
    assert 8 >= len(spans)
    for engine_id, held in spans.items():
        held.sort()
        for (_, done), (start, _) in zip(held, held[1:], strict=False):
            assert done <= start, f"{engine_id} held two jobs at once"
    engines = a.request("GET", "/engines/").json()["engines"]
    assert 500 == sum(e["jobs_completed"] for e in engines)


def test_one_idempotency_key_through_two_instances_makes_one_job(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    a, b = farm(workers=2), farm(workers=2)
    answers: list[tuple[str, int, str]] = []

    def submit(args: tuple[int, int]) -> None:
        key, attempt = args
        server = (a, b)[attempt % 2]
        response = requests.post(server.url + "/jobs/", json={**JOB, "priority": key % 5},
                                 headers={**server.headers, "Idempotency-Key": f"key-{key}"},
                                 timeout=10)
        answers.append((f"key-{key}", response.status_code, response.json()["job_id"]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, [(key, n) for key in range(20) for n in range(8)]))
    by_key: dict[str, list[tuple[int, str]]] = {}
    for key, status, job_id in answers:
        by_key.setdefault(key, []).append((status, job_id))
    assert 20 == len(by_key)
    for key, got in by_key.items():
        assert [200] * 7 + [201] == sorted(status for status, _ in got), key
        assert 1 == len({job_id for _, job_id in got}), key
    assert [(20,)] == rows(postgres, "SELECT count(*) FROM jobs")
    # /metrics shows the worker's pool and how long its units held a connection.
    session = requests.Session()  # one keep-alive connection: one worker
    session.get(a.url + "/metrics", timeout=10)  # its counts are read in a unit
    metrics = session.get(a.url + "/metrics", timeout=10).text
    assert 'distconv_db_unit_seconds_count{kind="read"}' in metrics
    for gauge in ("pool_size", "pool_available", "requests_waiting", "connections_lost"):
        assert f"distconv_db_{gauge} " in metrics


def test_kill_9_of_an_instance_loses_nothing_and_its_background_work_moves(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    args = ("--engine-timeout", "2")
    servers = [farm(*args, workers=2), farm(*args, workers=2)]
    holder = poll(lambda: leader(postgres), 10, "an instance leads")
    victim = instance_of(holder, servers)
    survivor = next(s for s in servers if s is not victim)
    acknowledged: list[str] = []
    stop = threading.Event()
    statuses: Counter[int] = Counter()

    def load(server: Server) -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.post(server.url + "/jobs/", json=JOB,
                                        headers=server.headers, timeout=10)
            except requests.ConnectionError:
                continue  # the killed instance: nothing was acknowledged
            statuses[response.status_code] += 1
            if response.status_code == 201:
                acknowledged.append(response.json()["job_id"])

    threads = [threading.Thread(target=load, args=(s,)) for s in servers for _ in range(3)]
    for thread in threads:
        thread.start()
    # An engine that falls silent: only a sweep marks it offline.
    assert 200 == survivor.request("POST", "/engines/heartbeat",
                                   json={"engine_id": "silent"}).status_code
    poll(lambda: len(acknowledged) > 50, 20, "load under way")
    victim.kill()
    killed_at = time.monotonic()
    new_holder = poll(lambda: (h := leader(postgres)) and h != holder and h, 10,
                          "another instance leads")
    took_over = time.monotonic() - killed_at
    assert instance_of(new_holder, servers) is survivor
    assert took_over <= 2.0 + 0.5  # two lease intervals (1 s), and a poll's slack
    poll(lambda: survivor.request("GET", "/engines/silent").json()["status"] == "offline",
             10, "the survivor's sweep marks the silent engine offline")
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join(20)
    assert 0 == statuses[500]
    stored = {job_id for job_id, in rows(postgres, "SELECT job_id FROM jobs")}
    assert set(acknowledged) <= stored
    assert len(acknowledged) == len(set(acknowledged))


def test_postgresql_stopped_and_started_under_load(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    server = farm(workers=2)
    acknowledged: list[str] = []
    answers: list[tuple[float, int, float]] = []  # (when, status, seconds taken)
    stop = threading.Event()

    def load(kind: str) -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            if kind == "post":
                response = session.post(server.url + "/jobs/", json=JOB,
                                        headers=server.headers, timeout=15)
            else:
                response = session.get(server.url + "/jobs/?limit=5", headers=server.headers,
                                       timeout=15)
            answers.append((started, response.status_code, time.monotonic() - started))
            if response.status_code == 503:
                assert "unavailable" == response.json()["error"]["code"]
            if kind == "post" and response.status_code == 201:
                acknowledged.append(response.json()["job_id"])

    threads = [threading.Thread(target=load, args=(kind,)) for kind in ("post", "get") * 2]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: len(acknowledged) > 20, 20, "load under way")
        postgres.stop("fast")
        down_at = time.monotonic()
        poll(lambda: any(s == 503 and t > down_at for t, s, _ in answers), 15,
                 "503 while the database is down")
        health = requests.get(server.url + "/health", timeout=15)
        assert (503, "unhealthy") == (health.status_code, health.json()["status"])
        assert "database" in health.json()["reason"]
        time.sleep(2)
    finally:
        postgres.start()
    up_at = time.monotonic()
    poll(lambda: any(s == 201 and t > up_at for t, s, _ in answers), 30,
             "submissions acknowledged again, without a restart")
    stop.set()
    for thread in threads:
        thread.join(20)
    # Every worker's pool finds the database again by itself (each within seconds).
    poll(lambda: all(requests.get(server.url + "/health", timeout=10).status_code == 200
                         for _ in range(6)), 10, "/health healthy again on every worker")
    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) <= {200, 201, 503}, statuses
    assert statuses[503] > 0
    assert max(seconds for _, _, seconds in answers) < 10
    stored = {job_id for job_id, in rows(postgres, "SELECT job_id FROM jobs")}
    assert set(acknowledged) <= stored


def test_the_queue_limit_is_exact_across_instances(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    """250 places (the test database allows 200 connections: the first submissions
    share the room lock, the last ones take it alone), 400 submissions racing through
    two instances: exactly 250 accepted."""
    a, b = farm("--queue-size", "250", workers=2), farm("--queue-size", "250", workers=2)
    statuses: list[int] = []

    def submit(n: int) -> None:
        server = (a, b)[n % 2]
        response = requests.post(server.url + "/jobs/", json=JOB, headers=server.headers,
                                 timeout=10)
        if response.status_code == 503:
            assert "queue_full" == response.json()["error"]["code"]
        statuses.append(response.status_code)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(submit, range(400)))
    assert {201: 250, 503: 150} == dict(Counter(statuses))
    assert [(250,)] == rows(postgres, "SELECT count(*) FROM jobs")


def test_a_dashboard_sign_in_holds_on_every_instance(
        farm: Callable[..., Server], postgres: PostgresServer) -> None:
    """Behind nginx any instance answers: a dashboard session signed in through one
    instance is honoured by the others, and by one started later, and so is its
    form token (the session secret is the farm's, kept in the database)."""
    a, b = farm(workers=2), farm(workers=2)
    job = a.request("POST", "/jobs/", json=JOB).json()["job_id"]
    browser = requests.Session()

    def token(server: Server, path: str) -> str:
        page = browser.get(server.url + path, timeout=10)
        assert 200 == page.status_code, page.url
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text[:300]
        return found.group(1)

    signed = browser.post(a.url + "/ui/login", timeout=10, allow_redirects=False,
                          data={"api_key": KEY, "csrf_token": token(a, "/ui/login")},
                          headers={"Origin": a.url})
    assert 303 == signed.status_code
    for server in (a, b, farm(workers=1)):
        for _ in range(4):  # every worker of the instance
            overview = browser.get(server.url + "/ui/", timeout=10, allow_redirects=False)
            assert 200 == overview.status_code, (server.url, overview.headers)
            assert "Sign out" in overview.text
    cancel = browser.post(b.url + f"/ui/jobs/{job}/cancel", timeout=10, allow_redirects=False,
                          data={"csrf_token": token(a, "/ui/jobs"), "confirmed": "yes"},
                          headers={"Origin": b.url})
    assert 303 == cancel.status_code, cancel.text[:300]
    assert "cancelled" == a.request("GET", f"/jobs/{job}").json()["status"]
    assert [(1,)] == rows(postgres, "SELECT count(*) FROM farm_secrets")


def test_metrics_count_what_every_worker_served(farm: Callable[..., Server]) -> None:
    """Whichever worker answers a scrape, /metrics counts the requests of all the
    instance's workers (a counter that jumped between workers' own counts would read
    as a reset to Prometheus), and the pool gauges add up every worker's pool."""
    server = farm(workers=3)
    for _ in range(30):  # a new connection each: any worker may answer
        response = requests.get(server.url + "/jobs/", headers=server.headers, timeout=10)
        assert 200 == response.status_code
    for _ in range(9):
        families = metric_families(requests.get(server.url + "/metrics", timeout=10).text)
        assert 30 == metric_value(families, "distconv_http_requests_total", endpoint="/jobs/",
                                  method="GET", status="200")
        assert 30 == metric_value(families, "distconv_http_request_duration_seconds_count",
                                  endpoint="/jobs/", status="200")
        # Each worker's pool keeps at least 2 connections; each reports once started.
        assert metric_value(families, "distconv_db_pool_size") >= 6
        assert metric_value(families, "distconv_jobs", status="pending") == 0
