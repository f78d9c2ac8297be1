"""``load_settings``: flags, ``DISTCONV_*`` variables, the INI config file, defaults.

Contract §1: precedence flag > environment > config file > default; every key of the
original README's ``server.conf`` examples is accepted; a bad setting is a
``SettingsError`` (the CLI's exit status 2) naming the key or file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dispatch.config.settings import Settings, SettingsError, load_settings

KEY = "settings-test-key-0123456789"
ENV = {"DISTCONV_API_KEY": KEY}

# The original README, "Configuration File", verbatim.
README_SERVER_CONF = """\
# DistConv Dispatch Server Configuration

# Security
api_key = your-secure-api-key

# Network
port = 8080
bind_address = 0.0.0.0

# State Management
state_file = /opt/distconv/server/data/server_state.json
auto_save_interval = 30

# Performance
max_concurrent_jobs = 100
engine_timeout_seconds = 300
job_queue_max_size = 1000

# Logging
log_level = INFO
log_file = /opt/distconv/server/logs/dispatch.log
log_rotation = daily
log_max_files = 30

# Engine Management
engine_heartbeat_timeout = 180
engine_benchmark_interval = 3600
auto_retry_failed_jobs = true
max_job_retries = 3
"""

# The original README, "Application Tuning", verbatim.
README_HIGH_THROUGHPUT = """\
# High-performance settings
max_concurrent_jobs = 500
engine_timeout_seconds = 60
job_queue_max_size = 5000
auto_save_interval = 10
thread_pool_size = 16
"""

README_MEMORY_CONSERVATIVE = """\
# Memory-conservative settings
max_concurrent_jobs = 50
job_queue_max_size = 200
auto_save_interval = 60
cleanup_interval = 300
"""


@pytest.fixture
def conf(tmp_path: Path) -> Callable[[str], str]:
    """Write a config file into tmp_path and return its path."""
    counter = iter(range(1000))

    def write(text: str) -> str:
        path = tmp_path / f"server-{next(counter)}.conf"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def load(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    return load_settings(argv or [], ENV if environ is None else environ)


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    """With only an API key, every setting has the contract's default."""
    settings = load()
    assert settings.api_key == KEY
    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.state_file == "server_state.json"
    assert settings.log_level == "INFO"
    assert settings.log_file is None
    assert settings.log_rotation == "none"
    assert settings.log_max_files == 30
    assert settings.max_concurrent_jobs == 100
    assert settings.job_queue_max_size == 1000
    assert settings.engine_heartbeat_timeout == 180
    assert settings.auto_save_interval == 30
    assert settings.retry_backoff_seconds == 5
    assert settings.retry_backoff_max_seconds == 300
    assert settings.thread_pool_size == 8
    assert settings.max_job_retries == 3
    assert settings.auto_retry_failed_jobs is True
    assert settings.finished_job_retention == 0
    assert settings.cleanup_interval == 60
    assert settings.config_file is None


# ------------------------------------------------------------ each setting, each source

# (field, flag, env variable, config key, raw value, expected value)
FULL: list[tuple[str, str, str, str, str, Any]] = [
    ("host", "--host", "DISTCONV_HOST", "bind_address", "0.0.0.0", "0.0.0.0"),
    ("port", "--port", "DISTCONV_PORT", "port", "9123", 9123),
    ("state_file", "--state-file", "DISTCONV_STATE_FILE", "state_file", "/var/s.json",
     "/var/s.json"),
    ("log_level", "--log-level", "DISTCONV_LOG_LEVEL", "log_level", "DEBUG", "DEBUG"),
    ("log_file", "--log-file", "DISTCONV_LOG_FILE", "log_file", "/var/d.log", "/var/d.log"),
    ("max_concurrent_jobs", "--max-jobs", "DISTCONV_MAX_JOBS", "max_concurrent_jobs", "7", 7),
    ("job_queue_max_size", "--queue-size", "DISTCONV_QUEUE_SIZE", "job_queue_max_size", "12",
     12),
    ("engine_heartbeat_timeout", "--engine-timeout", "DISTCONV_ENGINE_TIMEOUT",
     "engine_heartbeat_timeout", "45", 45),
    ("thread_pool_size", "--threads", "DISTCONV_THREADS", "thread_pool_size", "3", 3),
]

# (field, env variable, config key, raw value, expected value)
ENV_AND_FILE: list[tuple[str, str, str, str, Any]] = [
    ("auto_save_interval", "DISTCONV_AUTO_SAVE_INTERVAL", "auto_save_interval", "2.5", 2.5),
    ("retry_backoff_seconds", "DISTCONV_RETRY_BACKOFF", "retry_backoff_seconds", "9", 9),
    ("retry_backoff_max_seconds", "DISTCONV_RETRY_BACKOFF_MAX", "retry_backoff_max_seconds",
     "99", 99),
    ("finished_job_retention", "DISTCONV_JOB_RETENTION", "finished_job_retention", "3600",
     3600),
]

# (field, config key, raw value, expected value)
FILE_ONLY: list[tuple[str, str, str, Any]] = [
    ("log_rotation", "log_rotation", "hourly", "hourly"),
    ("log_max_files", "log_max_files", "7", 7),
    ("max_job_retries", "max_job_retries", "5", 5),
    ("auto_retry_failed_jobs", "auto_retry_failed_jobs", "false", False),
    ("cleanup_interval", "cleanup_interval", "15", 15),
    ("engine_benchmark_interval", "engine_benchmark_interval", "600", 600),
]


@pytest.mark.parametrize(("field", "flag", "env", "key", "raw", "expected"), FULL)
def test_setting_from_flag(field: str, flag: str, env: str, key: str, raw: str,
                           expected: Any) -> None:
    """Each flag of the table sets its setting."""
    assert getattr(load([flag, raw]), field) == expected


@pytest.mark.parametrize(("field", "flag", "env", "key", "raw", "expected"), FULL)
def test_setting_from_env(field: str, flag: str, env: str, key: str, raw: str,
                          expected: Any) -> None:
    """Each DISTCONV_* variable of the table sets its setting."""
    assert getattr(load(environ={**ENV, env: raw}), field) == expected


@pytest.mark.parametrize(("field", "flag", "env", "key", "raw", "expected"), FULL)
def test_setting_from_file(conf: Callable[[str], str], field: str, flag: str, env: str,
                           key: str, raw: str, expected: Any) -> None:
    """Each config-file key of the table sets its setting."""
    assert getattr(load(["--config", conf(f"{key} = {raw}\n")]), field) == expected


@pytest.mark.parametrize(("field", "env", "key", "raw", "expected"), ENV_AND_FILE)
def test_env_and_file_only_settings(conf: Callable[[str], str], field: str, env: str,
                                    key: str, raw: str, expected: Any) -> None:
    """Settings without a flag come from their variable or their config key."""
    assert getattr(load(environ={**ENV, env: raw}), field) == expected
    assert getattr(load(["--config", conf(f"{key} = {raw}\n")]), field) == expected


@pytest.mark.parametrize(("field", "key", "raw", "expected"), FILE_ONLY)
def test_file_only_settings(conf: Callable[[str], str], field: str, key: str, raw: str,
                            expected: Any) -> None:
    """Settings known only to the config file are read from it."""
    assert getattr(load(["--config", conf(f"{key} = {raw}\n")]), field) == expected


# ------------------------------------------------------------------------- precedence

# (flag, env variable, config key, field, flag value, env value, file value, expected x3)
PRECEDENCE = [
    ("--port", "DISTCONV_PORT", "port", "port", "1111", "2222", "3333", (1111, 2222, 3333)),
    ("--host", "DISTCONV_HOST", "bind_address", "host", "10.0.0.1", "10.0.0.2", "10.0.0.3",
     ("10.0.0.1", "10.0.0.2", "10.0.0.3")),
    ("--max-jobs", "DISTCONV_MAX_JOBS", "max_concurrent_jobs", "max_concurrent_jobs", "1", "2",
     "3", (1, 2, 3)),
    ("--log-level", "DISTCONV_LOG_LEVEL", "log_level", "log_level", "ERROR", "WARNING", "DEBUG",
     ("ERROR", "WARNING", "DEBUG")),
    ("--engine-timeout", "DISTCONV_ENGINE_TIMEOUT", "engine_heartbeat_timeout",
     "engine_heartbeat_timeout", "11", "22", "33", (11, 22, 33)),
    ("--threads", "DISTCONV_THREADS", "thread_pool_size", "thread_pool_size", "4", "5", "6",
     (4, 5, 6)),
    ("--state-file", "DISTCONV_STATE_FILE", "state_file", "state_file", "a.json", "b.json",
     "c.json", ("a.json", "b.json", "c.json")),
]


@pytest.mark.parametrize(
    ("flag", "env", "key", "field", "flag_raw", "env_raw", "file_raw", "expected"), PRECEDENCE
)
def test_precedence_flag_env_file_default(
    conf: Callable[[str], str], flag: str, env: str, key: str, field: str, flag_raw: str,
    env_raw: str, file_raw: str, expected: tuple[Any, Any, Any],
) -> None:
    """Flag beats variable, variable beats config file, config file beats default."""
    path = conf(f"{key} = {file_raw}\n")
    environ = {**ENV, env: env_raw}
    assert getattr(load([flag, flag_raw, "--config", path], environ), field) == expected[0]
    assert getattr(load(["--config", path], environ), field) == expected[1]
    assert getattr(load(["--config", path]), field) == expected[2]
    default = getattr(load(), field)
    assert default not in expected


def test_env_beats_file_for_env_only_setting(conf: Callable[[str], str]) -> None:
    """A setting without a flag still follows variable > file > default."""
    path = conf("auto_save_interval = 12\n")
    assert load(["--config", path], {**ENV, "DISTCONV_AUTO_SAVE_INTERVAL": "3"}) \
        .auto_save_interval == 3
    assert load(["--config", path]).auto_save_interval == 12
    assert load().auto_save_interval == 30


def test_config_file_from_env_and_flag_beats_env(conf: Callable[[str], str]) -> None:
    """DISTCONV_CONFIG names the config file; --config wins over it."""
    from_env = conf("port = 4001\n")
    from_flag = conf("port = 4002\n")
    environ = {**ENV, "DISTCONV_CONFIG": from_env}
    settings = load([], environ)
    assert settings.port == 4001
    assert settings.config_file == from_env
    assert load(["--config", from_flag], environ).port == 4002


# ------------------------------------------------------------------- API key and file


def test_api_key_from_each_source(conf: Callable[[str], str]) -> None:
    """The API key comes from --api-key, DISTCONV_API_KEY or api_key in the file."""
    assert load(["--api-key", "from-flag"], {}).api_key == "from-flag"
    assert load([], {"DISTCONV_API_KEY": "from-env"}).api_key == "from-env"
    assert load(["--config", conf("api_key = from-file\n")], {}).api_key == "from-file"


def test_api_key_precedence(conf: Callable[[str], str]) -> None:
    """For the key itself: flag beats variable beats config file."""
    path = conf("api_key = from-file\n")
    environ = {"DISTCONV_API_KEY": "from-env"}
    assert load(["--api-key", "from-flag", "--config", path], environ).api_key == "from-flag"
    assert load(["--config", path], environ).api_key == "from-env"
    assert load(["--config", path], {}).api_key == "from-file"


def test_api_key_file_content_is_stripped(tmp_path: Path, conf: Callable[[str], str]) -> None:
    """The key file's content, stripped of whitespace and newline, is the key; from any source."""
    key_file = tmp_path / "api_key"
    key_file.write_text("  0123abcdef\n\n", encoding="utf-8")
    assert load(["--api-key-file", str(key_file)], {}).api_key == "0123abcdef"
    assert load([], {"DISTCONV_API_KEY_FILE": str(key_file)}).api_key == "0123abcdef"
    assert load(["--config", conf(f"api_key_file = {key_file}\n")], {}).api_key == "0123abcdef"


def test_api_key_file_vs_api_key_precedence(tmp_path: Path, conf: Callable[[str], str]) -> None:
    """api_key and api_key_file compete by source: the higher-precedence source wins."""
    key_file = tmp_path / "api_key"
    key_file.write_text("from-key-file\n", encoding="utf-8")
    # key file by flag beats key by variable
    assert load(["--api-key-file", str(key_file)],
                {"DISTCONV_API_KEY": "from-env"}).api_key == "from-key-file"
    # key by flag beats key file by variable
    assert load(["--api-key", "from-flag"],
                {"DISTCONV_API_KEY_FILE": str(key_file)}).api_key == "from-flag"
    # key file by variable beats key in config file
    path = conf("api_key = from-conf\n")
    assert load(["--config", path],
                {"DISTCONV_API_KEY_FILE": str(key_file)}).api_key == "from-key-file"
    # key by variable beats key file in config file
    path = conf(f"api_key_file = {key_file}\n")
    assert load(["--config", path], {"DISTCONV_API_KEY": "from-env"}).api_key == "from-env"


# ------------------------------------------------------------------------------ alias


def test_engine_timeout_seconds_alias(conf: Callable[[str], str]) -> None:
    """engine_timeout_seconds (original README) sets the engine heartbeat timeout."""
    assert load(["--config", conf("engine_timeout_seconds = 300\n")]) \
        .engine_heartbeat_timeout == 300


def test_canonical_key_beats_alias(conf: Callable[[str], str]) -> None:
    """With both keys (as in the README example), engine_heartbeat_timeout is honoured."""
    path = conf("engine_timeout_seconds = 300\nengine_heartbeat_timeout = 180\n")
    assert load(["--config", path]).engine_heartbeat_timeout == 180


def test_alias_loses_to_env_and_flag(conf: Callable[[str], str]) -> None:
    """The alias is a config-file key like any other: variable and flag still win."""
    path = conf("engine_timeout_seconds = 300\n")
    environ = {**ENV, "DISTCONV_ENGINE_TIMEOUT": "40"}
    assert load(["--config", path], environ).engine_heartbeat_timeout == 40
    assert load(["--config", path, "--engine-timeout", "50"], environ) \
        .engine_heartbeat_timeout == 50


# ------------------------------------------------------------------ config file format


def test_config_comments_and_blank_lines(conf: Callable[[str], str]) -> None:
    """Full-line # comments, inline # comments and blank lines are ignored."""
    path = conf(
        "# a comment\n"
        "\n"
        "port = 9001   # inline comment\n"
        "   # indented comment\n"
        "bind_address = 10.1.2.3 # where to listen\n"
        "log_level = debug\n"
    )
    settings = load(["--config", path])
    assert settings.port == 9001
    assert settings.host == "10.1.2.3"
    assert settings.log_level == "DEBUG"


def test_config_without_section_header(conf: Callable[[str], str]) -> None:
    """A file with no [section] header (the original server.conf) is accepted."""
    assert load(["--config", conf("port = 9002\n")]).port == 9002


def test_config_with_section_header(conf: Callable[[str], str]) -> None:
    """A file with a [section] header is accepted too."""
    path = conf("# top comment\n[server]\nport = 9003\nmax_concurrent_jobs = 9\n")
    settings = load(["--config", path])
    assert settings.port == 9003
    assert settings.max_concurrent_jobs == 9


def test_readme_server_conf(conf: Callable[[str], str]) -> None:
    """The original README's full server.conf loads and every value is honoured."""
    settings = load(["--config", conf(README_SERVER_CONF)], {})
    assert settings.api_key == "your-secure-api-key"
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.state_file == "/opt/distconv/server/data/server_state.json"
    assert settings.auto_save_interval == 30
    assert settings.max_concurrent_jobs == 100
    assert settings.job_queue_max_size == 1000
    assert settings.log_level == "INFO"
    assert settings.log_file == "/opt/distconv/server/logs/dispatch.log"
    assert settings.log_rotation == "daily"
    assert settings.log_max_files == 30
    assert settings.engine_heartbeat_timeout == 180
    assert settings.engine_benchmark_interval == 3600
    assert settings.auto_retry_failed_jobs is True
    assert settings.max_job_retries == 3


def test_readme_high_throughput_snippet(conf: Callable[[str], str]) -> None:
    """The README's "High-throughput configuration" loads, thread_pool_size included."""
    settings = load(["--config", conf(README_HIGH_THROUGHPUT)])
    assert settings.max_concurrent_jobs == 500
    assert settings.engine_heartbeat_timeout == 60
    assert settings.job_queue_max_size == 5000
    assert settings.auto_save_interval == 10
    assert settings.thread_pool_size == 16


def test_readme_memory_conservative_snippet(conf: Callable[[str], str]) -> None:
    """The README's "Memory-optimized configuration" loads, cleanup_interval included."""
    settings = load(["--config", conf(README_MEMORY_CONSERVATIVE)])
    assert settings.max_concurrent_jobs == 50
    assert settings.job_queue_max_size == 200
    assert settings.auto_save_interval == 60
    assert settings.cleanup_interval == 300


@pytest.mark.parametrize(("raw", "expected"), [
    ("true", True), ("True", True), ("yes", True), ("1", True), ("on", True),
    ("false", False), ("FALSE", False), ("no", False), ("0", False), ("off", False),
])
def test_boolean_spellings(conf: Callable[[str], str], raw: str, expected: bool) -> None:
    """Usual boolean spellings are accepted for auto_retry_failed_jobs."""
    path = conf(f"auto_retry_failed_jobs = {raw}\n")
    assert load(["--config", path]).auto_retry_failed_jobs is expected


# ----------------------------------------------------------------------------- errors


def test_unknown_key_names_the_key(conf: Callable[[str], str]) -> None:
    """An unknown config key is an error naming it (a typo is not silently ignored)."""
    with pytest.raises(SettingsError, match="max_retires"):
        load(["--config", conf("port = 8080\nmax_retires = 3\n")])


def test_unknown_key_in_section_names_the_key(conf: Callable[[str], str]) -> None:
    """Unknown keys are found under a [section] header as well."""
    with pytest.raises(SettingsError, match="bogus_setting"):
        load(["--config", conf("[server]\nbogus_setting = 1\n")])


@pytest.mark.parametrize("key", [
    "port", "max_concurrent_jobs", "job_queue_max_size", "auto_save_interval",
    "engine_heartbeat_timeout", "engine_timeout_seconds", "thread_pool_size",
    "log_max_files", "max_job_retries", "cleanup_interval", "engine_benchmark_interval",
    "retry_backoff_seconds", "finished_job_retention",
])
def test_non_numeric_number_in_file_names_the_key(conf: Callable[[str], str], key: str) -> None:
    """A non-numeric value for a number key is an error naming the key, never a default."""
    with pytest.raises(SettingsError, match=key):
        load(["--config", conf(f"{key} = lots\n")])


@pytest.mark.parametrize(("env", "raw"), [
    ("DISTCONV_PORT", "abc"), ("DISTCONV_MAX_JOBS", "many"), ("DISTCONV_THREADS", "4.5"),
    ("DISTCONV_AUTO_SAVE_INTERVAL", "soon"),
])
def test_non_numeric_number_in_env_names_the_variable(env: str, raw: str) -> None:
    """A non-numeric value in a DISTCONV_* variable is an error naming the variable."""
    with pytest.raises(SettingsError, match=env):
        load(environ={**ENV, env: raw})


def test_non_numeric_flag() -> None:
    """--port abc is an error naming the flag."""
    with pytest.raises(SettingsError, match="--port"):
        load(["--port", "abc"])


def test_port_out_of_range() -> None:
    """A port outside 0..65535 is an error, not silently clamped or defaulted."""
    with pytest.raises(SettingsError, match="port"):
        load(["--port", "70000"])


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    """A config file that does not exist is an error naming the file."""
    missing = tmp_path / "nope.conf"
    with pytest.raises(SettingsError, match="nope.conf"):
        load(["--config", str(missing)])
    with pytest.raises(SettingsError, match="nope.conf"):
        load(environ={**ENV, "DISTCONV_CONFIG": str(missing)})


def test_unreadable_config_file_names_the_file(tmp_path: Path) -> None:
    """A config path that cannot be read (a directory, invalid UTF-8) names the file."""
    folder = tmp_path / "conf.d"
    folder.mkdir()
    with pytest.raises(SettingsError, match="conf.d"):
        load(["--config", str(folder)])
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"port = \xff\xfe\n")
    with pytest.raises(SettingsError, match="binary.conf"):
        load(["--config", str(binary)])


def test_malformed_config_file_names_the_file(conf: Callable[[str], str]) -> None:
    """A line that is not key = value is an error naming the file."""
    path = conf("port = 8080\nthis line is not a setting\n")
    with pytest.raises(SettingsError, match=Path(path).name):
        load(["--config", path])


def test_missing_api_key_says_how_to_set_one() -> None:
    """No key anywhere: an error that tells how to set one (DISTCONV_API_KEY)."""
    with pytest.raises(SettingsError, match="DISTCONV_API_KEY") as info:
        load([], {})
    assert "--api-key" in str(info.value)


def test_empty_api_key_is_an_error(conf: Callable[[str], str]) -> None:
    """An empty api_key in the config file does not start a server without a key."""
    with pytest.raises(SettingsError):
        load(["--config", conf("api_key =\n")], {})


@pytest.mark.parametrize("content", ["", "\n", "   \n\t\n"])
def test_empty_api_key_file(tmp_path: Path, content: str) -> None:
    """A key file that is empty (after stripping) is an error naming the file."""
    key_file = tmp_path / "empty_key"
    key_file.write_text(content, encoding="utf-8")
    with pytest.raises(SettingsError, match="empty_key"):
        load(["--api-key-file", str(key_file)], {})


def test_unreadable_api_key_file(tmp_path: Path) -> None:
    """A key file that cannot be read is an error naming the file, not a fallback."""
    missing = tmp_path / "missing_key"
    with pytest.raises(SettingsError, match="missing_key"):
        load(["--api-key-file", str(missing)], {})
    with pytest.raises(SettingsError, match="missing_key"):
        load([], {"DISTCONV_API_KEY_FILE": str(missing)})


def test_bad_api_key_file_does_not_fall_back(tmp_path: Path) -> None:
    """A bad key file is an error even when a lower-precedence key exists."""
    missing = tmp_path / "missing_key"
    with pytest.raises(SettingsError, match="missing_key"):
        load(["--api-key-file", str(missing)], {"DISTCONV_API_KEY": "fallback"})


@pytest.mark.parametrize("argv_env", [
    (["--log-level", "LOUD"], {}),
    ([], {"DISTCONV_LOG_LEVEL": "verbose"}),
])
def test_bad_log_level(argv_env: tuple[list[str], dict[str, str]]) -> None:
    """An unknown log level is an error naming where it came from."""
    argv, extra = argv_env
    with pytest.raises(SettingsError, match="--log-level|DISTCONV_LOG_LEVEL"):
        load(argv, {**ENV, **extra})


def test_bad_log_level_in_file(conf: Callable[[str], str]) -> None:
    """An unknown log level in the config file names the key."""
    with pytest.raises(SettingsError, match="log_level"):
        load(["--config", conf("log_level = chatty\n")])


def test_bad_boolean(conf: Callable[[str], str]) -> None:
    """A boolean key with a non-boolean value is an error naming the key."""
    with pytest.raises(SettingsError, match="auto_retry_failed_jobs"):
        load(["--config", conf("auto_retry_failed_jobs = maybe\n")])


def test_bad_log_rotation(conf: Callable[[str], str]) -> None:
    """log_rotation accepts daily, hourly, none only."""
    with pytest.raises(SettingsError, match="log_rotation"):
        load(["--config", conf("log_rotation = weekly\n")])


# ------------------------------------------------------------------------------ repr


def test_repr_hides_the_key(tmp_path: Path, conf: Callable[[str], str]) -> None:
    """repr()/str() of the settings never show the API key, whatever its source."""
    secret = "s3cr3t-do-not-log-0123456789"
    key_file = tmp_path / "api_key"
    key_file.write_text(secret + "\n", encoding="utf-8")
    for settings in (
        load(["--api-key", secret], {}),
        load([], {"DISTCONV_API_KEY": secret}),
        load(["--config", conf(f"api_key = {secret}\n")], {}),
        load(["--api-key-file", str(key_file)], {}),
    ):
        assert settings.api_key == secret
        assert secret not in repr(settings)
        assert secret not in str(settings)
        assert secret not in f"{settings!r} {settings}"
        assert "port=8080" in repr(settings)


def test_file_store_settings_from_flags_variables_and_the_file(tmp_path: Path) -> None:
    """Issue #21: the store's settings are settings like every other."""
    conf = tmp_path / "server.conf"
    conf.write_text("[server]\nstorage = s3://bucket/farm/\nupload_part_mb = 8\n")
    settings = load(["--config", str(conf), "--storage-endpoint", "http://127.0.0.1:8333"],
                    {**ENV, "DISTCONV_OUTPUT_RETENTION_DAYS": "2",
                     "DISTCONV_MAX_UPLOAD_GB": "0.5"})
    assert (settings.storage, settings.storage_endpoint, settings.upload_part_mb,
            settings.output_retention_days, settings.max_upload_gb) == (
        "s3://bucket/farm", "http://127.0.0.1:8333", 8, 2.0, 0.5)
    assert load([]).storage == "local" and load([]).upload_part_mb == 64
    for argv, name in ((["--storage", "ftp://bucket"], "storage"),
                       (["--storage", "s3://"], "storage"),
                       (["--upload-part-mb", "4"], "upload-part-mb"),
                       (["--public-url", "example.com"], "public-url")):
        with pytest.raises(SettingsError, match=name):
            load(argv)
