"""Issue #5, deployment: the systemd unit (checked by systemd-analyze), the install
script (into a temporary DESTDIR, twice), the installed server started the way the
unit starts it, and the nginx site in front of a real server (a real nginx on
loopback). Needs nginx and systemd-analyze: scripts/test-deps.sh installs them."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests
import urllib3

from dispatch import __version__
from dispatch.app import MAX_BODY
from dispatch.runtime.gunicorn_config import GRACEFUL_TIMEOUT
from tests.support.helpers import metric_families
from tests.support.helpers import poll as wait_until
from tests.support.server import Server, free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
UNIT_NAME = "distconv-dispatch.service"
UNIT_SOURCE = REPO / "systemd" / UNIT_NAME
ENV_EXAMPLE = REPO / "systemd" / "distconv-dispatch.env.example"
NGINX_SITE = REPO / "deploy" / "nginx" / "distconv-dispatch.conf"
INSTALL = REPO / "scripts" / "install.sh"
NGINX = "/usr/sbin/nginx"
DEFAULT_PREFIX = "/opt/distconv/server"
PREFIX = "/srv/distconv-test/server"  # not the default, to see the paths rewritten
JOB = {"source_url": "http://example.com/in.mp4", "target_codec": "h264", "job_size": 10}
# A second loopback address: the test client connects from it, nginx from 127.0.0.1,
# so the server's log tells the real client from the proxy.
CLIENT_ADDRESS = "127.0.0.2"
SPOOFED = "203.0.113.7"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file: [(key, value), ...] in order, continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    for line in logical:
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
        else:
            key, _, value = line.partition("=")
            sections[current].append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
            env[key] = value
    return env


def run_install(destdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(INSTALL)], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "DESTDIR": str(destdir), "PREFIX": PREFIX,
             "PYTHON": sys.executable, **env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# -------------------------------------------------------------- install script

@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DESTDIR of one run of scripts/install.sh."""
    destdir = tmp_path_factory.mktemp("destdir")
    run_install(destdir)
    return destdir


def test_install_lays_out_prefix_venv_config_and_unit(installed: Path) -> None:
    """bin, config, logs, data and venv under PREFIX; a working dispatch-server; the
    key generated with mode 600; the env and config files; the unit in
    DESTDIR/etc/systemd/system with its paths rewritten to PREFIX."""
    root = installed / PREFIX.lstrip("/")
    for folder in ("bin", "config", "logs", "data", "venv"):
        assert (root / folder).is_dir(), folder
    for folder in ("config", "logs", "data"):
        assert stat.S_IMODE((root / folder).stat().st_mode) & 0o007 == 0, folder

    binary = root / "bin" / "dispatch-server"
    assert os.access(binary, os.X_OK)
    # Run from the checkout: the installed copy runs, not the sources in the cwd.
    version = subprocess.run([str(binary), "--version"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"dispatch-server {__version__}"
    where = subprocess.run(
        [str(binary.parent.parent / "venv" / "bin" / "python"), "-I", "-c",
         "import dispatch; print(dispatch.__file__)"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert where.stdout.strip().startswith(str(root / "venv")), where

    key = root / "config" / "api_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", key.read_text())
    for name in ("distconv-dispatch.env", "distconv-dispatch.env.example", "server.conf",
                 "server.conf.example"):
        text = (root / "config" / name).read_text()
        assert DEFAULT_PREFIX not in text, name
        assert name.startswith("server.conf") or f"{PREFIX}/" in text, name
    env = read_env_file(root / "config" / "distconv-dispatch.env")
    assert env["DISTCONV_TRUSTED_PROXIES"] == "1"
    assert env["DISTCONV_API_KEY_FILE"] == f"{PREFIX}/config/api_key"
    assert "DISTCONV_API_KEY" not in env

    unit = installed / "etc" / "systemd" / "system" / UNIT_NAME
    text = unit.read_text()
    assert DEFAULT_PREFIX not in text
    service = parse_unit(text)["Service"]
    assert values(service, "ExecStart") == [f"{PREFIX}/bin/dispatch-server"]
    assert values(service, "ReadWritePaths") == [f"{PREFIX}/data {PREFIX}/logs"]
    # Not root's system: no user made, nothing handed to one.
    assert {path.stat().st_uid for path in (root / "data", root / "logs", key)} == {
        os.getuid()}
    # Nothing written into the checkout by the build.
    assert not (REPO / "build").exists()


def test_install_twice_upgrades_and_keeps_key_config_and_data(
        tmp_path: Path) -> None:
    """A second run succeeds, keeps the key, the administrator's edits and the data,
    and still gives a working server."""
    destdir = tmp_path / "dest"
    run_install(destdir)
    root = destdir / PREFIX.lstrip("/")
    key = (root / "config" / "api_key").read_text()
    env_file = root / "config" / "distconv-dispatch.env"
    env_file.write_text(env_file.read_text() + "DISTCONV_THREADS=4\n")
    edited = env_file.read_text()
    (root / "data" / "server_state.json").write_text('{"jobs": {}, "engines": {}}')
    (root / "bin" / "dispatch-server").unlink()  # a damaged install is repaired

    second = run_install(destdir)
    assert "generated" not in second.stdout
    assert (root / "config" / "api_key").read_text() == key
    assert env_file.read_text() == edited
    assert (root / "data" / "server_state.json").read_text() == '{"jobs": {}, "engines": {}}'
    version = subprocess.run([str(root / "bin" / "dispatch-server"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"dispatch-server {__version__}"


def test_install_rejects_a_relative_prefix(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True,
                            env={**os.environ, "DESTDIR": str(tmp_path), "PREFIX": "opt/x"},
                            timeout=60)
    assert result.returncode == 2
    assert "PREFIX must be an absolute path" in result.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ systemd unit

def test_unit_is_hardened_and_keeps_the_key_off_the_command_line() -> None:
    """The issue's list: dedicated user, working directory, EnvironmentFile, the key
    from a file, hardening, writable data and logs only, restart on failure, a stop
    timeout longer than the graceful shutdown, no ExecReload, one worker."""
    text = UNIT_SOURCE.read_text()
    unit = parse_unit(text)
    service = unit["Service"]
    single = {key: values(service, key) for key, _ in service}
    assert single["User"] == ["distconv"] and single["Group"] == ["distconv"]
    assert single["WorkingDirectory"] == [DEFAULT_PREFIX]
    assert single["EnvironmentFile"] == [f"{DEFAULT_PREFIX}/config/distconv-dispatch.env"]
    assert f"DISTCONV_API_KEY_FILE={DEFAULT_PREFIX}/config/api_key" in single["Environment"]
    assert not any(v.startswith("DISTCONV_API_KEY=") for v in single["Environment"])
    assert single["ExecStart"] == [f"{DEFAULT_PREFIX}/bin/dispatch-server"]
    assert "ExecReload" not in single
    for key, expected in (("NoNewPrivileges", "true"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "true"), ("PrivateTmp", "true"),
                          ("Restart", "on-failure")):
        assert single[key] == [expected], key
    assert single["ReadWritePaths"] == [f"{DEFAULT_PREFIX}/data {DEFAULT_PREFIX}/logs"]
    assert int(single["LimitNOFILE"][0]) >= 4096
    stop_timeout = int(single["TimeoutStopSec"][0])
    assert stop_timeout >= GRACEFUL_TIMEOUT + 30, "graceful stop plus the final snapshot"
    assert unit["Install"] == [("WantedBy", "multi-user.target")]
    comments = " ".join(line for line in text.splitlines() if line.startswith("#")).lower()
    assert "workers stay at one" in comments
    assert "exec" + "reload" in comments.replace(" ", "")  # says why there is none


def systemd_verify(unit: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify's exit status and its stderr lines about ``unit``."""
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=120)
    about_unit = [line for line in (result.stdout + result.stderr).splitlines()
                  if unit.name in line or str(unit) in line]
    return result.returncode, about_unit


def test_systemd_analyze_verify_accepts_the_installed_unit(
        installed: Path, tmp_path: Path) -> None:
    """systemd-analyze verify passes, without a warning about the unit, on the unit the
    install script wrote (its paths pointed into DESTDIR, where the binary exists)."""
    root = installed / PREFIX.lstrip("/")
    text = (installed / "etc" / "systemd" / "system" / UNIT_NAME).read_text()
    unit = tmp_path / "good" / UNIT_NAME
    unit.parent.mkdir()
    unit.write_text(text.replace(PREFIX, str(root)))
    code, complaints = systemd_verify(unit)
    assert code == 0 and complaints == [], complaints

    # The same check does see a unit's mistakes (systemd-analyze exits 0 on some).
    broken = tmp_path / "broken" / UNIT_NAME
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    code, complaints = systemd_verify(broken)
    assert any("ProtectSytem" in line for line in complaints), complaints
    missing = tmp_path / "missing" / UNIT_NAME
    missing.parent.mkdir()
    missing.write_text(text)  # ExecStart under PREFIX, which does not exist here
    code, complaints = systemd_verify(missing)
    assert code != 0 and complaints


def unit_environment(installed: Path) -> tuple[list[str], dict[str, str], Path]:
    """ExecStart, the environment and the working directory systemd would give the
    installed unit, with PREFIX pointed into DESTDIR."""
    root = installed / PREFIX.lstrip("/")
    service = parse_unit((installed / "etc" / "systemd" / "system" / UNIT_NAME
                          ).read_text())["Service"]

    def local(text: str) -> str:
        return text.replace(PREFIX, str(root))

    env: dict[str, str] = {}
    for assignment in values(service, "Environment"):
        key, _, value = assignment.partition("=")
        env[key] = local(value)
    for path in values(service, "EnvironmentFile"):
        env.update({k: local(v) for k, v in read_env_file(Path(local(path))).items()})
    command = local(values(service, "ExecStart")[0]).split()
    return command, env, Path(local(values(service, "WorkingDirectory")[0]))


def test_installed_server_runs_as_the_unit_starts_it(installed: Path) -> None:
    """The unit's ExecStart with its Environment= and EnvironmentFile (and nothing from
    the test's environment): the key comes from the key file, state and logs land in
    data/ and logs/, and SIGTERM stops it with status 0 well within TimeoutStopSec."""
    command, env, workdir = unit_environment(installed)
    root = installed / PREFIX.lstrip("/")
    key = (root / "config" / "api_key").read_text().strip()
    port = free_port()
    env.update({"DISTCONV_PORT": str(port), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8"})
    assert "DISTCONV_API_KEY" not in env
    output = root / "logs" / "stderr.txt"
    with open(output, "wb") as handle:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, output.read_text()
            try:
                return requests.get(url + "/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 30, "the installed server")
        assert key not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert requests.get(url + "/jobs/", timeout=10).status_code == 401
        submitted = requests.post(url + "/jobs/", json=JOB, headers={"X-API-Key": key},
                                  timeout=10)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["job_id"]
        log_file = root / "logs" / "dispatch.log"
        wait_until(lambda: log_file.exists() and '"POST /jobs/" 201' in log_file.read_text(),
                   10, "the access line in logs/dispatch.log")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=GRACEFUL_TIMEOUT + 30) == 0, output.read_text()
        assert time.monotonic() - started < GRACEFUL_TIMEOUT
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    data = sorted(path.name for path in (root / "data").iterdir())
    assert "server_state.json.wal" in data, data
    state = "".join(path.read_text(errors="replace") for path in (root / "data").iterdir()
                    if path.name.startswith("server_state.json"))
    assert job_id in state
    assert key not in log_file.read_text() and key not in output.read_text()


# ------------------------------------------------------------------------ nginx

def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} should appear once in {NGINX_SITE.name}"
    return text.replace(old, new)


class Nginx:
    """The site file, served by a real nginx on loopback with a temporary prefix."""

    def __init__(self, workdir: Path, upstream_port: int) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = NGINX_SITE.read_text()
        site = replace_once(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream_port};")
        site = replace_once(site, "listen 80;", f"listen 127.0.0.1:{self.port};")
        site = replace_once(site, "listen [::]:80;", "")
        (workdir / "site.conf").write_text(site)
        user = "user root;" if os.geteuid() == 0 else ""  # workers must reach tmp_path
        temp = "\n".join(f"    {kind}_temp_path {workdir}/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(f"""{user}
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
{temp}
    include {workdir}/site.conf;
}}
""")
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", f"{self.dir}/", "-c", str(self.conf), "-e", str(self.error_log),
                "-g", "daemon off;", *extra]

    def start(self) -> Nginx:
        check = subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        output = open(self.dir / "nginx.out", "wb")
        self.proc = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        output.close()

        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.errors()
            try:
                return requests.get(self.url + "/health", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 20, "nginx")
        return self

    def errors(self) -> str:
        return "".join(path.read_text(errors="replace") for path in
                       (self.error_log, self.dir / "nginx.out") if path.exists())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Nginx]]:
    """A real server with --trusted-proxies 1 and a log file, behind the nginx site."""
    assert shutil.which(NGINX), "run scripts/test-deps.sh first"
    server_dir = tmp_path_factory.mktemp("server")
    server = Server(server_dir, "deploy-test-key", "--trusted-proxies", "1",
                    "--log-file", str(server_dir / "dispatch.log"))
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), server.port)
    server.start()
    try:
        nginx.start()
        yield server, nginx
        nginx.stop()
        assert server.terminate() == 0
        # Only the refused oversized body may be an error; nothing about the upstream.
        problems = [line for line in nginx.errors().splitlines()
                    if re.search(r"\[(error|crit|alert|emerg)\]", line)
                    and "client intended to send too large body" not in line]
        assert problems == []
    finally:
        nginx.stop()
        server.stop()


def access_lines(log_file: Path) -> list[tuple[str, str, str, int]]:
    """(client, method, path, status) of each access-log line."""
    found = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        match = re.search(r' dispatch\.access (\S+) "(\S+) (\S+)" (\d{3}) ', line)
        if match:
            found.append((match[1], match[2], match[3], int(match[4])))
    return found


def client_of(log_file: Path, method: str, path: str) -> str:
    """The client address the server logged for the request ``method path``."""
    def find() -> str | None:
        for client, logged_method, logged_path, _ in access_lines(log_file):
            if (logged_method, logged_path) == (method, path):
                return client
        return None

    return wait_until(find, 10, f"the access line of {method} {path}")


def test_readme_walkthrough_through_nginx(stack: tuple[Server, Nginx]) -> None:
    """Submit, heartbeat, assign, complete and get, all through the proxy."""
    server, nginx = stack
    http = requests.Session()
    http.headers["X-API-Key"] = server.api_key

    submitted = http.post(nginx.url + "/jobs/", json={**JOB, "max_retries": 3}, timeout=10)
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert job["status"] == "pending"
    assert submitted.headers["Location"].endswith(f"/jobs/{job['job_id']}")

    engine = http.post(nginx.url + "/engines/heartbeat", timeout=10, json={
        "engine_id": "engine-001", "engine_type": "transcoder",
        "supported_codecs": ["h264", "h265", "vp9"], "status": "idle",
        "storage_capacity_gb": 500.0, "streaming_support": True,
        "hostname": "worker-01.example.com", "benchmark_time": 125.5})
    assert engine.status_code == 200, engine.text

    assigned = http.post(nginx.url + "/assign_job/", timeout=10,
                         json={"engine_id": "engine-001", "capabilities": ["h264", "h265"]})
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["job_id"] == job["job_id"]
    assert http.post(nginx.url + "/assign_job/", json={"engine_id": "engine-001"},
                     timeout=10).json()["job_id"] == job["job_id"]  # re-delivered

    completed = http.post(nginx.url + f"/jobs/{job['job_id']}/complete", timeout=10,
                          json={"output_url": "http://storage.example.com/output.mp4"})
    assert completed.status_code == 200, completed.text

    got = http.get(nginx.url + f"/jobs/{job['job_id']}", timeout=10)
    assert got.status_code == 200
    assert got.json()["status"] == "completed"
    assert got.json()["output_url"] == "http://storage.example.com/output.mp4"
    assert got.json()["assigned_engine"] == "engine-001"

    # curl -d sends a form content type; through nginx it still reads as JSON.
    curl_like = http.post(nginx.url + "/jobs/", data='{"source_url": "http://e.com/a.mp4", '
                          '"target_codec": "vp9", "job_size": 1}', timeout=10,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl_like.status_code == 201, curl_like.text
    assert http.get(nginx.url + "/jobs/", timeout=10).json()["total"] == 2

    unauthorized = requests.get(nginx.url + "/jobs/", timeout=10)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["code"] == "unauthorized"
    metrics = requests.get(nginx.url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    names = set(metric_families(metrics.text))
    assert {"distconv_jobs", "distconv_http_requests"} <= names


def test_bodies_over_one_mib_get_413_and_the_limits_agree(
        stack: tuple[Server, Nginx]) -> None:
    """nginx's client_max_body_size and the server's limit are both 1 MiB: one byte more
    is 413 through nginx and directly; exactly 1 MiB passes nginx to the server."""
    server, nginx = stack
    headers = {"X-API-Key": server.api_key, "Content-Type": "application/json"}
    too_big = b" " * (MAX_BODY + 1)
    through = requests.post(nginx.url + "/jobs/", data=too_big, headers=headers, timeout=30)
    assert through.status_code == 413
    assert through.json()["error"]["code"] == "payload_too_large"  # nginx's own, same shape
    direct = requests.post(server.url + "/jobs/", data=too_big, headers=headers, timeout=30)
    assert direct.status_code == 413
    assert direct.json()["error"]["code"] == "payload_too_large"

    # A JSON body of exactly 1 MiB: nginx lets it through and the server judges it
    # (its URL is too long: a validation error, in the server's error shape).
    padding = MAX_BODY - len(b'{"source_url": "http://e.com/", "target_codec": "h264", '
                             b'"job_size": 1}')
    body = ('{"source_url": "http://e.com/' + "a" * padding
            + '", "target_codec": "h264", "job_size": 1}').encode()
    assert len(body) == MAX_BODY
    at_limit = requests.post(nginx.url + "/jobs/", data=body, headers=headers, timeout=30)
    assert at_limit.status_code == 400, at_limit.text[:300]
    assert at_limit.json()["error"]["code"] == "validation_error"
    assert "source_url" in at_limit.json()["error"]["details"]


def from_client_address(method: str, url: str, headers: dict[str, str]) -> int:
    """A request sent from CLIENT_ADDRESS; returns the status."""
    with urllib3.PoolManager(source_address=(CLIENT_ADDRESS, 0), retries=False) as pool:
        return pool.request(method, url, headers=headers, timeout=10).status


def test_server_logs_the_client_nginx_saw_not_a_forged_one(
        stack: tuple[Server, Nginx]) -> None:
    """Behind nginx (trusted_proxies = 1) the log names the client nginx saw: not
    nginx's own address, and not an X-Forwarded-For the client made up."""
    server, nginx = stack
    log_file = server.workdir / "dispatch.log"
    key = {"X-API-Key": server.api_key}

    assert from_client_address("GET", nginx.url + "/jobs/plain", key) == 404
    assert client_of(log_file, "GET", "/jobs/plain") == CLIENT_ADDRESS

    forged = {**key, "X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED}
    assert from_client_address("GET", nginx.url + "/jobs/forged", forged) == 404
    assert client_of(log_file, "GET", "/jobs/forged") == CLIENT_ADDRESS

    # Straight from nginx's own host: the proxy's address is the client's here.
    assert requests.get(nginx.url + "/jobs/local", headers=key, timeout=10).status_code == 404
    assert client_of(log_file, "GET", "/jobs/local") == "127.0.0.1"


def test_forged_forwarded_for_is_ignored_without_trusted_proxies(tmp_path: Path) -> None:
    """A server with no proxy configured (trusted_proxies = 0, the default) logs the
    connecting address and ignores X-Forwarded-For, whatever it says."""
    log_file = tmp_path / "dispatch.log"
    server = Server(tmp_path, "direct-test-key", "--log-file", str(log_file)).start()
    try:
        headers = {**server.headers, "X-Forwarded-For": SPOOFED}
        assert from_client_address("GET", server.url + "/jobs/direct", headers) == 404
        assert client_of(log_file, "GET", "/jobs/direct") == CLIENT_ADDRESS
        assert SPOOFED not in log_file.read_text()
        assert server.terminate() == 0
    finally:
        server.stop()


def test_health_probes_stay_out_of_the_nginx_access_log(stack: tuple[Server, Nginx]) -> None:
    """location /health has access_log off; other requests are logged by nginx."""
    _, nginx = stack
    for _ in range(3):
        assert requests.get(nginx.url + "/health", timeout=10).status_code == 200
    assert requests.get(nginx.url + "/jobs/marker-request", timeout=10).status_code == 401
    wait_until(lambda: nginx.access_log.exists()
               and "/jobs/marker-request" in nginx.access_log.read_text(), 10,
               "nginx's access line")
    assert "/health" not in nginx.access_log.read_text()


# Request heads too large for the server's HTTP parser (dispatch/runtime/edge.py) or for
# nginx's buffers: (raw request, status). Whichever of the two refuses, the answer is
# the API's JSON error shape with the same status.
OVERSIZED = {
    "request line of 5,000 bytes": (
        b"GET /jobs/?q=" + b"a" * (5000 - len(b"GET /jobs/?q= HTTP/1.1")) + b" HTTP/1.1\r\n"
        b"Host: x\r\n\r\n", 414),
    "request line of 20,000 bytes": (
        b"GET /jobs/?q=" + b"a" * (20000 - len(b"GET /jobs/?q= HTTP/1.1")) + b" HTTP/1.1\r\n"
        b"Host: x\r\n\r\n", 414),
    "200 header fields": (
        b"GET /health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-Field-%d: %d\r\n" % (n, n) for n in range(200)) + b"\r\n", 431),
    "a header field of 10 KiB": (
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Large: " + b"a" * 10240 + b"\r\n\r\n", 431),
}


def raw_request(port: int, data: bytes) -> tuple[int, str, bytes]:
    """Send ``data`` as it is (no client library would send these) and read the
    answer: status, content type, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


@pytest.mark.parametrize("what", list(OVERSIZED))
def test_oversized_request_heads_get_the_error_shape_directly_and_through_nginx(
        stack: tuple[Server, Nginx], what: str) -> None:
    server, nginx = stack
    data, status = OVERSIZED[what]
    for where, port in (("server", server.port), ("nginx", nginx.port)):
        got, content_type, body = raw_request(port, data)
        assert (got, content_type) == (status, "application/json"), (where, body[:300])
        error = orjson.loads(body)["error"]
        assert set(error) == {"code", "message"}, (where, body)
        assert error["code"] == "bad_request" and error["message"], (where, body)
    assert requests.get(nginx.url + "/health", timeout=10).status_code == 200


# ------------------------------------------------------------------ engine unit

ENGINE_UNIT = REPO / "systemd" / "distconv-engine.service"
ENGINE_ENV = REPO / "systemd" / "distconv-engine.env.example"
ENGINE_PREFIX = "/opt/distconv/engine"
ENGINE_BIN = Path(sys.executable).with_name("dispatch-engine")


def local_engine_unit(tmp_path: Path) -> tuple[Path, Path]:
    """The engine unit and its env file with /opt/distconv/engine pointed into
    ``tmp_path`` and ExecStart at this checkout's dispatch-engine."""
    root = tmp_path / "engine"
    for folder in ("config", "work", "output"):
        (root / folder).mkdir(parents=True)
    text = ENGINE_UNIT.read_text().replace(
        f"{ENGINE_PREFIX}/venv/bin/dispatch-engine", str(ENGINE_BIN))
    unit = tmp_path / "unit" / ENGINE_UNIT.name
    unit.parent.mkdir()
    unit.write_text(text.replace(ENGINE_PREFIX, str(root)))
    (root / "config" / "distconv-engine.env").write_text(
        ENGINE_ENV.read_text().replace(ENGINE_PREFIX, str(root)))
    return unit, root


def test_engine_unit_is_hardened_drains_on_stop_and_verifies(tmp_path: Path) -> None:
    """The engine unit: service user, key from a file, only its work and output folders
    writable, SIGTERM to the engine alone (its ffmpeg keeps the job going during the
    drain) with a stop timeout of hours, no restart on a settings error; and
    systemd-analyze verify accepts it."""
    unit = parse_unit(ENGINE_UNIT.read_text())
    service = unit["Service"]
    single = {key: values(service, key) for key, _ in service}
    assert single["User"] == ["distconv"] and single["Group"] == ["distconv"]
    assert single["ExecStart"] == [f"{ENGINE_PREFIX}/venv/bin/dispatch-engine"]
    assert single["EnvironmentFile"] == [f"{ENGINE_PREFIX}/config/distconv-engine.env"]
    assert f"DISTCONV_API_KEY_FILE={ENGINE_PREFIX}/config/api_key" in single["Environment"]
    assert not any(v.startswith("DISTCONV_API_KEY=") for v in single["Environment"])
    for key, expected in (("NoNewPrivileges", "true"), ("ProtectSystem", "strict"),
                          ("ProtectHome", "true"), ("PrivateTmp", "true"),
                          ("KillMode", "mixed"), ("KillSignal", "SIGTERM"),
                          ("Restart", "on-failure"), ("RestartPreventExitStatus", "2")):
        assert single[key] == [expected], key
    assert single["ReadWritePaths"] == [f"{ENGINE_PREFIX}/work {ENGINE_PREFIX}/output"]
    assert single["TimeoutStopSec"] == ["4h"]
    assert unit["Install"] == [("WantedBy", "multi-user.target")]

    local, _ = local_engine_unit(tmp_path)
    code, complaints = systemd_verify(local)
    assert code == 0 and complaints == [], complaints


def test_engine_runs_as_its_unit_starts_it(tmp_path: Path) -> None:
    """ExecStart with the unit's Environment= and the example EnvironmentFile only:
    the key comes from the key file, the engine registers with the server, and SIGTERM
    (idle) stops it with status 0."""
    unit, root = local_engine_unit(tmp_path)
    service = parse_unit(unit.read_text())["Service"]
    env = dict(value.partition("=")[::2] for value in values(service, "Environment"))
    env.update(read_env_file(Path(values(service, "EnvironmentFile")[0])))
    key = "engine-unit-key-0123456789"
    (root / "config" / "api_key").write_text(key + "\n")
    server = Server(tmp_path, key).start()
    env.update({"DISTCONV_SERVER": server.url, "DISTCONV_ENGINE_ID": "unit-engine",
                "DISTCONV_CODECS": "h264", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG": "C.UTF-8"})
    log = tmp_path / "engine-stderr.txt"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(values(service, "ExecStart")[0].split(), env=env,
                                cwd=values(service, "WorkingDirectory")[0],
                                stdout=subprocess.DEVNULL, stderr=handle)
    try:
        engine = wait_until(lambda: (lambda r: r.json() if r.status_code == 200 else None)(
            server.request("GET", "/engines/unit-engine")), 60, "the engine registered")
        assert engine["supported_codecs"] == ["h264"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "engine unit-engine exiting" in log.read_text()
        assert key not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.stop()
