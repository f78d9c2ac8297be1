"""Issue #11, point 1: the engine's settings come from flags, ``DISTCONV_*`` variables
and an INI file (flag > variable > file > default), by the server's own machinery; a
bad one exits 2 naming it. Point 2's mapping of a job's codec to the proven encoder."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from dispatch import __version__
from dispatch.config.settings import SettingsError
from dispatch.engine.capabilities import Encoder, detect
from dispatch.engine.client import BACKOFF_CAP, backoff
from dispatch.engine.config import DEFAULT_SERVER, EngineConfig, load_config
from tests.support.engine import BIN

KEY = "engine-test-key-0123456789"
ENV = {"DISTCONV_API_KEY": KEY, "PATH": "/usr/bin:/bin"}
FFMPEG = shutil.which("ffmpeg", path=ENV["PATH"])


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=60,
                          env=ENV if env is None else env, stdin=subprocess.DEVNULL)


def test_defaults() -> None:
    """Without settings: the local server, the host name as engine id, 5 s heartbeats,
    every built-in codec detected, ffmpeg and ffprobe from PATH."""
    config = load_config([], ENV)
    assert config == EngineConfig(
        api_key=KEY, engine_id=socket.gethostname(), ffmpeg=FFMPEG or "",
        ffprobe=shutil.which("ffprobe", path=ENV["PATH"]) or "")
    assert (config.server, config.heartbeat_interval, config.codecs, config.output_url_base) \
        == (DEFAULT_SERVER, 5.0, None, None)
    assert KEY not in repr(config)


def test_flag_beats_variable_beats_file(tmp_path: Path) -> None:
    """Each setting from the source with the highest precedence; codecs parse as
    CODEC or CODEC=ENCODER; the key may come from a key file."""
    (tmp_path / "key").write_text(KEY + "\n")
    ini = tmp_path / "engine.conf"
    ini.write_text("server = http://file.example:1\nengine_id = from-file\n"
                   "work_dir = /w/file\nheartbeat_interval = 9\ncodecs = av1\n"
                   f"api_key_file = {tmp_path / 'key'}\n")
    env = {"PATH": ENV["PATH"], "DISTCONV_ENGINE_CONFIG": str(ini),
           "DISTCONV_ENGINE_ID": "from-env", "DISTCONV_WORK_DIR": "/w/env",
           "DISTCONV_CODECS": "h264, mpeg4=mpeg4"}
    config = load_config(["--work-dir", "/w/flag", "--output-url-base",
                          "http://files.example/out/", "--heartbeat-interval", "1"], env)
    assert (config.server, config.engine_id, config.work_dir, config.heartbeat_interval,
            config.codecs, config.api_key, config.output_url_base) == (
        "http://file.example:1", "from-env", "/w/flag", 1.0,
        (("h264", ""), ("mpeg4", "mpeg4")), KEY, "http://files.example/out")


@pytest.mark.parametrize(("argv", "named"), [
    (["--server", "ftp://x"], "--server"),
    (["--engine-id", "bad id!"], "--engine-id"),
    (["--heartbeat-interval", "0"], "--heartbeat-interval"),
    (["--codecs", "h264,vp9="], "--codecs"),
    (["--codecs", ","], "--codecs"),
    (["--ffmpeg", "/nonexistent/ffmpeg"], "--ffmpeg"),
    (["--output-url-base", "not-a-url"], "--output-url-base"),
    (["--log-level", "LOUD"], "--log-level"),
    (["--max-download-gb", "-1"], "--max-download-gb"),
])
def test_bad_setting_is_an_error_naming_it(argv: list[str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_config(argv, ENV)


def test_no_key_and_unknown_ini_key_are_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no API key"):
        load_config([], {"PATH": ENV["PATH"]})
    ini = tmp_path / "engine.conf"
    ini.write_text("heartbeat_intervall = 3\n")
    with pytest.raises(SettingsError, match="unknown key 'heartbeat_intervall'"):
        load_config(["--config", str(ini)], ENV)


def test_cli_help_version_and_exit_2() -> None:
    """--help and --version exit 0; a bad setting, a missing ffmpeg and an unusable work
    folder exit 2 with one line naming the problem."""
    helped = run("--help")
    assert helped.returncode == 0 and "--output-url-base" in helped.stdout
    version = run("--version")
    assert (version.returncode, version.stdout.strip()) == (0, f"dispatch-engine {__version__}")
    bad = run("--heartbeat-interval", "soon")
    assert bad.returncode == 2
    assert bad.stderr == ("dispatch-engine: invalid value for --heartbeat-interval: "
                          "'soon' is not a number\n")
    no_ffmpeg = run(env={**ENV, "PATH": "/nonexistent"})
    assert (no_ffmpeg.returncode, no_ffmpeg.stderr) == (
        2, "dispatch-engine: no ffmpeg on PATH: install ffmpeg or pass --ffmpeg\n")
    folder = run("--work-dir", "/proc/distconv-work")
    assert folder.returncode == 2 and folder.stderr.startswith(
        "dispatch-engine: invalid value for --work-dir: cannot use /proc/distconv-work")


def test_detect_keeps_only_encoders_whose_test_encode_passes() -> None:
    """A real test encode per candidate: h264 maps to a working encoder (libx264 here,
    the hardware ones failing without a device), CODEC=ENCODER adds a codec, and a
    codec whose encoder does not exist is not offered. A job's codec is matched by
    family (libx264 and h264 are one)."""
    assert FFMPEG
    capabilities = detect(FFMPEG, (("h264", ""), ("mpeg4", "mpeg4"), ("h265", "nosuchenc")))
    assert capabilities.advertised == ("h264", "mpeg4")
    h264 = capabilities.encoder_for("h264")
    assert isinstance(h264, Encoder)
    assert capabilities.encoder_for("libx264") == h264
    assert capabilities.encoder_for("MPEG4") == Encoder("mpeg4")
    assert capabilities.encoder_for("hevc") is None


def test_backoff_is_capped_exponential_with_jitter() -> None:
    for attempt in range(1, 40):
        delay = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1))
        waits = {backoff(attempt) for _ in range(20)}
        assert all(delay / 2 <= w <= delay for w in waits)
        assert len(waits) > 1  # jitter
