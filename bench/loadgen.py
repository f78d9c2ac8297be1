"""A small closed-loop HTTP/1.1 load generator: P processes x M keep-alive connections.

Each process drives its connections from one ``selectors`` loop over raw non-blocking
sockets (no http.client, no threads), so a request costs the client a few tens of
microseconds of CPU. Every connection runs a *scenario*: a Python generator that yields
``(label, request bytes)`` and is sent back ``(status, body)``; one request is in
flight per connection at a time (closed loop), so concurrency = P x M.

The result of :func:`run` holds, per label, the requests completed inside the
measurement window (after the warm-up), their latencies, the statuses seen, and the
client processes' own CPU time, so a report can show the generator is not the
bottleneck (its CPU use, in cores, stays well below what the machine has).

Only loopback targets are accepted: this is a bench tool, not a traffic source.
"""

from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import os
import random
import resource
import selectors
import socket
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import orjson

Scenario = Generator[tuple[str | None, bytes], tuple[int, bytes], None]
CODECS = ("h264", "h265", "vp9", "av1")


def request_bytes(method: str, path: str, host: str, api_key: str | None,
                  body: Any = None) -> bytes:
    """One HTTP/1.1 keep-alive request, ready to send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if api_key:
        lines.append(f"X-API-Key: {api_key}")
    payload = b""
    if body is not None:
        payload = orjson.dumps(body)
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


# ------------------------------------------------------------------ scenarios

@dataclass
class Ctx:
    """What a scenario gets: where to send, who it is, and a way to record a
    composite sample (e.g. one whole submit -> assign -> complete cycle)."""

    host: str
    api_key: str | None
    proc: int
    conn: int
    index: int  # global connection number, 0 .. P*M-1
    params: dict[str, Any]
    rng: random.Random
    record: Callable[[str, float], None]

    def req(self, method: str, path: str, body: Any = None) -> bytes:
        return request_bytes(method, path, self.host, self.api_key, body)


def _job_body(ctx: Ctx, codec: str | None = None) -> dict[str, Any]:
    n = ctx.rng.getrandbits(48)
    return {
        "source_url": f"https://media.example.com/in/{ctx.index}/{n:x}.mp4",
        "target_codec": codec or ctx.rng.choice(CODECS),
        "job_size": round(ctx.rng.uniform(1, 4000), 1),
    }


def _job_id(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data.get("job_id") if isinstance(data, dict) else None


def sc_submit(ctx: Ctx) -> Scenario:
    while True:
        yield "POST /jobs/", ctx.req("POST", "/jobs/", _job_body(ctx))


def sc_get(ctx: Ctx) -> Scenario:
    ids: list[str] = ctx.params["job_ids"]
    while True:
        yield "GET /jobs/{id}", ctx.req("GET", f"/jobs/{ctx.rng.choice(ids)}")


def sc_list(ctx: Ctx) -> Scenario:
    request = ctx.req("GET", "/jobs/?limit=50")
    while True:
        yield "GET /jobs/?limit=50", request


def sc_health(ctx: Ctx) -> Scenario:
    request = ctx.req("GET", "/health")
    while True:
        yield "GET /health", request


def sc_heartbeat(ctx: Ctx) -> Scenario:
    # 8 engines per connection, so the table holds P*M*8 engines.
    bodies = [
        ctx.req("POST", "/engines/heartbeat", {
            "engine_id": f"bench-hb-{ctx.index}-{k}", "supported_codecs": list(CODECS),
            "engine_type": "bench", "hostname": f"host-{ctx.index}-{k}",
            "storage_capacity_gb": 500.0, "status": "idle",
        }) for k in range(8)
    ]
    k = 0
    while True:
        yield "POST /engines/heartbeat", bodies[k % 8]
        k += 1


def _register(ctx: Ctx, engine_id: str, codecs: list[str]) -> Scenario:
    status, body = yield None, ctx.req("POST", "/engines/heartbeat", {
        "engine_id": engine_id, "supported_codecs": codecs, "engine_type": "bench",
        "storage_capacity_gb": 10000.0, "status": "idle",
    })
    if status != 200:
        raise RuntimeError(f"heartbeat for {engine_id} answered {status}: {body[:200]!r}")


def sc_cycle(ctx: Ctx) -> Scenario:
    """One engine per connection: submit -> assign -> complete, again and again."""
    engine_id = f"bench-engine-{ctx.index}"
    yield from _register(ctx, engine_id, list(CODECS))
    assign = ctx.req("POST", "/assign_job/", {"engine_id": engine_id})
    while True:
        started = time.perf_counter()
        yield "cycle: submit", ctx.req("POST", "/jobs/", _job_body(ctx))
        status, body = yield "cycle: assign", assign
        if status != 200:
            continue
        job_id = _job_id(body) or "x"  # the bare baseline answers without one
        yield "cycle: complete", ctx.req(
            "POST", f"/jobs/{job_id}/complete",
            {"output_url": f"https://media.example.com/out/{job_id}.mp4",
             "engine_id": engine_id})
        ctx.record("cycle", time.perf_counter() - started)


def sc_assign(ctx: Ctx) -> Scenario:
    """Measure POST /assign_job/ against a queue of pending jobs kept at its size:
    each engine completes the job it got and submits one of the same codec."""
    codecs = [CODECS[ctx.index % 4], CODECS[(ctx.index + 1) % 4]]
    engine_id = f"bench-assign-{ctx.index}"
    yield from _register(ctx, engine_id, codecs)
    assign = ctx.req("POST", "/assign_job/", {"engine_id": engine_id})
    while True:
        status, body = yield "POST /assign_job/", assign
        if status != 200:
            continue
        data = orjson.loads(body)
        job_id = data.get("job_id", "x")
        yield "complete", ctx.req(
            "POST", f"/jobs/{job_id}/complete",
            {"output_url": f"https://media.example.com/out/{job_id}.mp4",
             "engine_id": engine_id})
        yield "submit", ctx.req("POST", "/jobs/",
                                _job_body(ctx, data.get("target_codec") or codecs[0]))


def sc_page(ctx: Ctx) -> Scenario:
    """A dashboard page (params: path, and the session cookie that signs it in)."""
    path = ctx.params["path"]
    request = ctx.req("GET", path).replace(
        b"\r\n\r\n", f"\r\nCookie: {ctx.params['cookie']}\r\n\r\n".encode(), 1)
    while True:
        yield f"GET {path}", request


SCENARIOS: dict[str, Callable[[Ctx], Scenario]] = {
    "submit": sc_submit,
    "get": sc_get,
    "list": sc_list,
    "health": sc_health,
    "heartbeat": sc_heartbeat,
    "cycle": sc_cycle,
    "assign": sc_assign,
    "page": sc_page,
}


# --------------------------------------------------------------- the engine

class ProtocolError(Exception):
    pass


class _Conn:
    __slots__ = ("sock", "scenario", "label", "sent_at", "buf", "out", "request",
                 "head_end", "need", "events", "status")

    def __init__(self, sock: socket.socket, scenario: Scenario) -> None:
        self.sock = sock
        self.scenario = scenario
        self.label: str | None = None
        self.request = b""
        self.sent_at = 0.0
        self.buf = bytearray()
        self.out = b""
        self.head_end = -1
        self.need = -1
        self.events = 0
        self.status = 0


def _parse(conn: _Conn) -> tuple[int, bytes] | None:
    """A complete response from the buffer, or None while more is needed."""
    buf = conn.buf
    if conn.head_end < 0:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        conn.head_end = end + 4
        head = bytes(buf[:end]).split(b"\r\n")
        try:
            status = int(head[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {head[0]!r}") from None
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise ProtocolError("chunked responses are not supported")
        if status in (204, 304) or 100 <= status < 200:
            length = 0
        conn.need = conn.head_end + length
        conn.status = status
    if len(buf) < conn.need:
        return None
    status = conn.status
    body = bytes(buf[conn.head_end:conn.need])
    del buf[:conn.need]
    conn.head_end = conn.need = -1
    return status, body


@dataclass
class ProcResult:
    samples: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    total_requests: int = 0  # including warm-up
    reconnects: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    error: str | None = None


def _connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _child(proc: int, conns: int, addr: tuple[str, int], api_key: str | None,
           scenario_name: str, params: dict[str, Any], t_start: float, t_measure: float,
           t_end: float, seed: int) -> ProcResult:
    result = ProcResult()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    wall0 = time.monotonic()

    def record(label: str, seconds: float) -> None:
        now = time.monotonic()
        if t_measure <= now < t_end:
            result.samples.setdefault(label, []).append(seconds)

    sel = selectors.DefaultSelector()
    host = f"{addr[0]}:{addr[1]}"
    live: list[_Conn] = []
    for c in range(conns):
        index = proc * conns + c
        ctx = Ctx(host, api_key, proc, c, index, params,
                  random.Random(seed * 1_000_003 + index), record)
        live.append(_Conn(_connect(addr), SCENARIOS[scenario_name](ctx)))
    while time.monotonic() < t_start:
        time.sleep(min(0.01, max(0.0, t_start - time.monotonic())))

    def send_next(conn: _Conn, response: tuple[int, bytes] | None) -> bool:
        try:
            label, data = (next(conn.scenario) if response is None
                           else conn.scenario.send(response))
        except StopIteration:
            if conn.events:
                sel.unregister(conn.sock)
                conn.events = 0
            return False
        conn.label, conn.request = label, data
        conn.sent_at = time.perf_counter()
        _write(conn, data)
        return True

    def _write(conn: _Conn, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        conn.out = data[sent:]
        wanted = selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ
        if conn.events == 0:
            sel.register(conn.sock, wanted, conn)
        elif conn.events != wanted:
            sel.modify(conn.sock, wanted, conn)
        conn.events = wanted

    def reconnect(conn: _Conn) -> None:
        result.reconnects += 1
        if conn.events:
            sel.unregister(conn.sock)
            conn.events = 0
        conn.sock.close()
        conn.sock = _connect(addr)
        conn.buf.clear()
        conn.head_end = conn.need = -1
        conn.sent_at = time.perf_counter()
        _write(conn, conn.request)  # resend the request that was lost

    try:
        for conn in live:
            send_next(conn, None)
        while time.monotonic() < t_end and sel.get_map():
            for key, events in sel.select(timeout=0.2):
                conn = key.data
                if events & selectors.EVENT_WRITE and conn.out:
                    _write(conn, conn.out)
                    continue
                try:
                    chunk = conn.sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    if exc.errno in (errno.ECONNRESET, errno.EPIPE):
                        reconnect(conn)
                        continue
                    raise
                if not chunk:
                    reconnect(conn)
                    continue
                conn.buf += chunk
                response = _parse(conn)
                if response is None:
                    continue
                elapsed = time.perf_counter() - conn.sent_at
                result.total_requests += 1
                label = conn.label
                if label is not None:
                    now = time.monotonic()
                    if t_measure <= now < t_end:
                        result.samples.setdefault(label, []).append(elapsed)
                        counts = result.statuses.setdefault(label, {})
                        counts[response[0]] = counts.get(response[0], 0) + 1
                send_next(conn, response)
    except Exception:
        result.error = traceback.format_exc()
    finally:
        for conn in live:
            conn.sock.close()
        sel.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    result.wall_seconds = time.monotonic() - wall0
    return result


def _child_main(pipe: Any, *args: Any) -> None:
    try:
        result = _child(*args)
    except Exception:
        result = ProcResult(error=traceback.format_exc())
    pipe.send(result)
    pipe.close()


# -------------------------------------------------------------- the runner

@dataclass
class LabelStats:
    count: int
    rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    statuses: dict[int, int]


@dataclass
class RunResult:
    scenario: str
    procs: int
    conns: int
    seconds: float
    labels: dict[str, LabelStats]
    total_requests: int
    client_cpu_seconds: float
    client_wall_seconds: float
    reconnects: int
    errors: list[str]

    @property
    def client_cores(self) -> float:
        """CPU the generator used, in cores (the machine has os.cpu_count())."""
        return self.client_cpu_seconds / self.client_wall_seconds if \
            self.client_wall_seconds else 0.0

    @property
    def client_us_per_request(self) -> float:
        return 1e6 * self.client_cpu_seconds / self.total_requests if \
            self.total_requests else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = q / 100 * (len(sorted_values) - 1)
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _check_loopback(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_loopback:
            raise ValueError(f"{host} is not a loopback address; the bench only "
                             "sends traffic to this machine")


def run(host: str, port: int, scenario: str, *, api_key: str | None = None,
        procs: int = 2, conns: int = 4, seconds: float = 4.0, warmup: float = 1.0,
        params: dict[str, Any] | None = None, seed: int = 1) -> RunResult:
    """Drive ``scenario`` with ``procs`` x ``conns`` connections for ``warmup`` +
    ``seconds``; return per-label throughput and latency over the last ``seconds``."""
    _check_loopback(host)
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    ctx = multiprocessing.get_context("fork")
    t_start = time.monotonic() + 0.3 + 0.02 * procs
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    children = []
    for proc in range(procs):
        parent_end, child_end = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_main, args=(
            child_end, proc, conns, (host, port), api_key, scenario, params or {},
            t_start, t_measure, t_end, seed), daemon=True)
        child.start()
        child_end.close()
        children.append((child, parent_end))
    results: list[ProcResult] = []
    for child, pipe in children:
        if pipe.poll(t_end - time.monotonic() + 60):
            results.append(pipe.recv())
        else:
            results.append(ProcResult(error="no answer from a load process"))
        child.join(10)
        if child.is_alive():
            child.kill()
            child.join()
    merged: dict[str, list[float]] = {}
    statuses: dict[str, dict[int, int]] = {}
    for res in results:
        for label, values in res.samples.items():
            merged.setdefault(label, []).extend(values)
        for label, counts in res.statuses.items():
            into = statuses.setdefault(label, {})
            for status, n in counts.items():
                into[status] = into.get(status, 0) + n
    labels = {}
    for label, values in merged.items():
        values.sort()
        counts = statuses.get(label, {})
        labels[label] = LabelStats(
            count=len(values), rate=len(values) / seconds,
            p50_ms=1000 * percentile(values, 50), p99_ms=1000 * percentile(values, 99),
            p999_ms=1000 * percentile(values, 99.9), max_ms=1000 * values[-1],
            errors=sum(n for status, n in counts.items() if status >= 400),
            statuses=counts,
        )
    return RunResult(
        scenario=scenario, procs=procs, conns=conns, seconds=seconds, labels=labels,
        total_requests=sum(r.total_requests for r in results),
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
        client_wall_seconds=max((r.wall_seconds for r in results), default=0.0),
        reconnects=sum(r.reconnects for r in results),
        errors=[r.error for r in results if r.error],
    )


if __name__ == "__main__":  # a quick manual use: python -m bench.loadgen PORT SCENARIO
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", default=os.environ.get("DISTCONV_API_KEY"))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    out = run(args.host, args.port, args.scenario, api_key=args.api_key, procs=args.procs,
              conns=args.conns, seconds=args.seconds)
    for name, stats in out.labels.items():
        print(f"{name:28s} {stats.rate:9.0f}/s  p50 {stats.p50_ms:7.2f} ms  "
              f"p99 {stats.p99_ms:7.2f} ms  statuses {stats.statuses}")
    print(f"client CPU {out.client_cores:.2f} cores, {out.client_us_per_request:.0f} us/request;"
          f" reconnects {out.reconnects}")
    for error in out.errors:
        print(error)
