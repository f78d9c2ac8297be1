"""``dispatch-engine``: settings, folders, capabilities, then the loop until SIGTERM.

Exit status: 0 after a drain or a stop, 1 when no codec passed its test encode,
2 for bad settings (named) or folders that cannot be used.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from dispatch.config.settings import SettingsError
from dispatch.engine.capabilities import benchmark, detect
from dispatch.engine.config import EngineConfig, load_config
from dispatch.engine.loop import Engine
from dispatch.engine.transcode import clean_leftovers
from dispatch.runtime.logs import FORMAT, EventFormatter, Redactor, add_secrets

log = logging.getLogger("dispatch.engine")


def configure_logging(config: EngineConfig) -> None:
    """The server's line format and key redaction, to stderr (journald under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EventFormatter(FORMAT))
    handler.addFilter(Redactor())
    add_secrets([config.api_key])
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings only
    logging.getLogger("dispatch").setLevel(config.log_level)


def prepare_folders(config: EngineConfig) -> None:
    """Create the work and output folders and clear what a crashed run left there."""
    for name, folder in (("--work-dir", config.work_dir),
                         ("--output-dir", config.outputs_folder)):
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = Path(folder) / ".distconv-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise SettingsError(f"invalid value for {name}: cannot use {folder}: "
                                f"{exc.strerror or exc}") from None
    for path in clean_leftovers(Path(config.work_dir), Path(config.outputs_folder)):
        log.info("removed leftover %s", path)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(sys.argv[1:] if argv is None else argv)
        configure_logging(config)
        prepare_folders(config)
    except SettingsError as exc:
        print(f"dispatch-engine: {exc}", file=sys.stderr)
        return 2
    log.info("engine %s starting: server %s, work %s, output %s", config.engine_id,
             config.server, config.work_dir,
             config.output_dir or "the server's store (else " + config.outputs_folder + ")")

    engine: Engine | None = None
    stop_requests = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requests
        stop_requests += 1
        if engine is not None:
            engine.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    capabilities = detect(config.ffmpeg, config.codecs).with_threads(config.ffmpeg_threads)
    if not capabilities.encoders:
        log.error("no codec passed its test encode; nothing to offer the server")
        return 1
    seconds = benchmark(config.ffmpeg, capabilities)
    log.info("codecs %s; benchmark %s s", ", ".join(capabilities.advertised), seconds)
    engine = Engine(config, capabilities, seconds)
    for _ in range(stop_requests):  # a SIGTERM during start-up still counts
        engine.request_stop()
    return engine.run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
