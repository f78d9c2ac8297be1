"""The engine's life: heartbeats on their own thread, jobs one at a time on the main
thread, and the rules for cancel, loss, drain and shutdown.

Threads: the main thread asks for work and runs ffmpeg (it must: ffmpeg is told to die
with the thread that started it); the heartbeat thread reports every interval and
stops ffmpeg when the server lists the job as cancelled; ffmpeg's stop escalation runs
on a thread of its own.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from dispatch.engine.capabilities import Capabilities
from dispatch.engine.client import ServerClient, Stopped, backoff
from dispatch.engine.config import EngineConfig
from dispatch.engine.run import Follower, JobRun
from dispatch.engine.tasks import run_task
from dispatch.engine.transcode import (
    Interrupted,
    JobError,
    container_for,
    fetch_source,
    ffmpeg_command,
    output_url,
    probe,
    publish,
    remove,
    safe_name,
)
from dispatch.engine.upload import upload_output

log = logging.getLogger("dispatch.engine")

PROGRESS_EVERY = 1.0  # seconds between progress reports, at most
# Seconds between asks for work while idle: the tasks of a new plan reach every idle
# engine within it (an idle engine costs the server one short request a second).
MAX_IDLE_WAIT = 1.0
SHUTDOWN_REPORT_FOR = 10.0  # seconds a shutdown's fail report is retried
MAX_MESSAGE = 4000  # the server takes error messages up to 4096 characters
SHUTTING_DOWN = "engine shutting down"


class Engine:
    def __init__(self, config: EngineConfig, capabilities: Capabilities,
                 benchmark_time: float | None) -> None:
        self.config = config
        self.capabilities = capabilities
        self.benchmark_time = benchmark_time
        self.work_dir = Path(config.work_dir)
        self.output_dir = Path(config.outputs_folder)
        self.hostname = socket.gethostname()
        self.client = ServerClient(config.server, config.api_key, config.engine_id)
        self.current: JobRun | None = None
        self.draining = threading.Event()  # first SIGTERM: take no new job
        self.aborting = threading.Event()  # second SIGTERM: stop the job in hand
        self.registered = threading.Event()
        self._beat_now = threading.Event()
        self._finished = threading.Event()
        self._abort_at = 0.0

    # ------------------------------------------------------------ signals

    def request_stop(self) -> None:
        """First call: drain (finish the job in hand, take no other). Second call:
        stop ffmpeg and give the job back."""
        if not self.draining.is_set():
            log.info("draining: finishing the current job, then exiting")
            self.draining.set()
            self._beat_now.set()
            return
        if not self.aborting.is_set():
            log.info("stopping now: the current job is given back to the server")
            self._abort_at = time.monotonic()
            self.aborting.set()
            run = self.current
            if run is not None:
                run.stop("shutdown")

    # ------------------------------------------------------------ heartbeat

    def status(self) -> str:
        if self.draining.is_set():
            return "draining"
        return "busy" if self.current is not None else "idle"

    def heartbeat_payload(self) -> dict[str, Any]:
        run = self.current
        try:
            free_gb = shutil.disk_usage(self.work_dir).free / 1024**3
        except OSError:
            free_gb = 0.0
        payload: dict[str, Any] = {
            "engine_type": "dispatch-engine", "status": self.status(),
            "supported_codecs": list(self.capabilities.advertised),
            "storage_capacity_gb": round(free_gb, 2), "hostname": self.hostname,
            "streaming_support": False, "local_job_queue": [run.job_id] if run else [],
        }
        # None advertised: the field is left out, so the server sees what it sees of a
        # C++ engine and gives this one whole jobs only.
        if self.config.task_kinds:
            payload["task_kinds"] = list(self.config.task_kinds)
        return payload

    def beat_once(self, client: ServerClient) -> bool:
        answer = client.heartbeat(self.heartbeat_payload(),
                                  timeout=max(1.0, min(10.0, self.config.heartbeat_interval)))
        if answer is None:
            return False
        if answer.status != 200:
            log.error("heartbeat refused: %s", answer.message)
            return False
        self.registered.set()
        cancelled = answer.body.get("cancelled_jobs") or [] if answer.body else []
        run = self.current
        if run is not None and run.job_id in cancelled:
            log.info("job %s cancelled by the server; stopping ffmpeg", run.job_id)
            run.stop("cancelled")
        return True

    def _heartbeats(self) -> None:
        client = ServerClient(self.config.server, self.config.api_key, self.config.engine_id)
        reachable = True
        while not self._finished.is_set():
            ok = self.beat_once(client)
            if ok != reachable:
                if ok:
                    log.info("heartbeat: server reachable again")
                else:
                    log.warning("heartbeat: server unreachable; still trying every %g s",
                                self.config.heartbeat_interval)
                reachable = ok
            self._beat_now.wait(self.config.heartbeat_interval)
            self._beat_now.clear()

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        beats = threading.Thread(target=self._heartbeats, daemon=True, name="heartbeat")
        beats.start()
        try:
            while not self.registered.wait(0.2):
                if self.draining.is_set():
                    return 0
            if self.benchmark_time is not None:
                self._post_benchmark()
            self._work()
        finally:
            self._finished.set()
            self._beat_now.set()
            beats.join(15)
        log.info("engine %s exiting", self.config.engine_id)
        return 0

    def _post_benchmark(self) -> None:
        try:
            answer = self.client.until_answered(
                "POST", "/engines/benchmark_result",
                {"engine_id": self.config.engine_id, "benchmark_time": self.benchmark_time},
                stop=self.draining, give_up=self.draining.is_set)
        except Stopped:
            return
        if answer.status == 200:
            log.info("benchmark %.3f s recorded", self.benchmark_time)
        else:
            log.warning("benchmark not recorded: %s", answer.message)

    def _work(self) -> None:
        refusals = 0
        body = {"engine_id": self.config.engine_id,
                "capabilities": list(self.capabilities.advertised)}
        idle_wait = min(self.config.heartbeat_interval, MAX_IDLE_WAIT)
        while not self.draining.is_set():
            try:
                answer = self.client.until_answered("POST", "/assign_job/", body,
                                                    stop=self.draining,
                                                    give_up=self.draining.is_set)
            except Stopped:
                return
            if answer.status == 200 and isinstance(answer.body, dict):
                refusals = 0
                self.run_job(answer.body)
            elif answer.status == 204:
                refusals = 0
                self.draining.wait(idle_wait)
            else:
                # 404: the server forgot this engine (its state was lost); the next
                # heartbeat registers it again. Anything else: log and back off.
                refusals += 1
                log.warning("asking for work: %s", answer.message)
                self.draining.wait(backoff(refusals, base=idle_wait))

    # ------------------------------------------------------------ one job

    def run_job(self, job: dict[str, Any]) -> None:
        """Do one assigned job or task and report how it ended (nothing when it was
        cancelled or lost; a give-back when the engine is shutting down)."""
        run = JobRun(job)
        self.current = run
        what = f"task ({run.task.get('kind')})" if run.task else "job"
        log.info("%s %s assigned: codec %s, attempt %s", what, run.job_id, run.codec,
                 run.attempt)
        # Everything this run writes goes in one folder, removed at the end (and by
        # clean_leftovers after a crash: its name starts with the work prefix).
        folder = self.work_dir / f"job-{safe_name(run.job_id)}-{run.attempt or 0}"
        outcome: tuple[str, dict[str, Any]] | None = None
        final: Path | None = None
        started = time.monotonic()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if run.task is None:
                report, final = self._transcode(run, folder)
            else:
                report, final = run_task(self, run, folder)
            if run.task is not None:  # a whole job's line is _transcode's, with its figures
                log.info("%s %s completed in %.2f s", what, run.job_id,
                         time.monotonic() - started)
            outcome = ("complete", report)
        except JobError as exc:
            if run.stop_reason is None:
                log.warning("%s %s failed: codec %s: %s", what, run.job_id, run.codec,
                            exc.reason)
                message = exc.reason if not exc.detail else f"{exc.reason}\n{exc.detail}"
                outcome = ("fail", {"error_message": message[:MAX_MESSAGE]})
        except Interrupted:
            pass
        except Exception as exc:  # a full disk, a bug: fail this job, keep the engine
            if run.stop_reason is None:
                log.exception("%s %s failed: engine error", what, run.job_id)
                outcome = ("fail", {"error_message": f"engine error: {exc.__class__.__name__}: "
                                                     f"{exc}"[:MAX_MESSAGE]})
            if run.ffmpeg is not None:
                run.ffmpeg.stop()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if run.stop_reason == "shutdown":
            log.info("%s %s stopped: %s", what, run.job_id, SHUTTING_DOWN)
            outcome = ("fail", {"error_message": SHUTTING_DOWN})
        elif run.stop_reason is not None:
            log.info("%s %s %s: stopped, nothing reported", what, run.job_id, run.stop_reason)
        if outcome is not None:
            self._final_report(run, *outcome, output=final)
        self.current = None
        self._beat_now.set()  # tell the server at once that this engine is idle

    def _transcode(self, run: JobRun, folder: Path) -> tuple[dict[str, Any], Path | None]:
        """A whole job: fetch the source, encode it all, deliver the output."""
        encoder = self.capabilities.encoder_for(run.codec)
        if encoder is None:
            raise JobError(f"codec {run.codec!r} is not supported by engine "
                           f"{self.config.engine_id}")
        container = container_for(run.codec)
        produced = folder / f"output.{container.extension}"
        started = time.monotonic()
        self.progress(run, 0.0)
        source = fetch_source(run.source_url, folder / "source",
                              int(self.config.max_download_gb * 1e9), lambda: run.stopped)
        duration = probe(self.config.ffprobe, source)
        if run.stopped:
            raise Interrupted()
        log.info("job %s transcoding: codec %s, encoder %s, duration %s s", run.job_id,
                 run.codec, encoder.name, f"{duration:.1f}" if duration else "unknown")
        ffmpeg = run.encode(ffmpeg_command(self.config.ffmpeg, source, encoder, container,
                                           produced),
                            produced, self.follower(run, duration))
        report, final = self.deliver(run, produced, container.extension)
        speed = duration / ffmpeg.elapsed if duration and ffmpeg.elapsed else 0.0
        log.info("job %s completed: codec %s, duration %s s, ffmpeg %.2f s, speed %.2fx, "
                 "total %.2f s", run.job_id, run.codec,
                 f"{duration:.1f}" if duration else "unknown", ffmpeg.elapsed, speed,
                 time.monotonic() - started)
        return report, final

    def deliver(self, run: JobRun, produced: Path,
                extension: str) -> tuple[dict[str, Any], Path | None]:
        """The output to the server's store (when it offers one and no output folder
        was given), else into the output folder; returns the ``complete`` body and
        the kept file (None when stored)."""
        if run.output_upload and self.config.output_dir is None:
            report = upload_output(self.client, run.job_id, run.stamp(), produced, extension,
                                   lambda: run.stopped, self.aborting)
            log.info("%s: output in the server's store (upload %s)", run.job_id,
                     report["upload_id"])
            return report, None
        final = publish(produced, self.output_dir,
                        f"{safe_name(run.job_id)}-{run.attempt or 0}.{extension}")
        shown = output_url(final, self.output_dir, self.config.output_url_base)
        log.info("%s: output %s", run.job_id, shown)
        return {"output_url": shown}, final

    def _final_report(self, run: JobRun, kind: str, body: dict[str, Any],
                      output: Path | None) -> None:
        def give_up() -> bool:
            return (self.aborting.is_set()
                    and time.monotonic() - self._abort_at > SHUTDOWN_REPORT_FOR)

        try:
            answer = self.client.report(run.job_id, kind, {**body, **run.stamp()},
                                        give_up=give_up)
        except Stopped:
            log.warning("job %s: %s not reported (server unreachable at shutdown)",
                        run.job_id, kind)
            return
        if answer.status == 200:
            log.info("job %s: %s recorded by the server", run.job_id, kind)
            return
        log.warning("job %s: %s refused (%s); the job is no longer this engine's",
                    run.job_id, kind, answer.message)
        # Nobody will look for this output: the job is someone else's now.
        remove(output)

    def progress(self, run: JobRun, percent: float,
                  figures: dict[str, float] | None = None) -> None:
        """One progress report (with ffmpeg's fps, speed and the ETA when known); a
        failed one is not retried (the next one supersedes it), a refused one means
        the job is no longer this engine's."""
        answer = self.client.once("POST", f"/jobs/{run.job_id}/progress",
                                  {"engine_id": self.config.engine_id,
                                   "progress": round(percent, 2), **(figures or {}),
                                   **run.stamp()},
                                  timeout=(2.0, 5.0))
        if answer is not None and answer.status in (404, 409):
            log.info("job %s: progress refused (%s); stopping", run.job_id, answer.message)
            run.stop("lost")

    def follower(self, run: JobRun, duration: float | None) -> Follower:
        last = time.monotonic()

        def on_progress(seconds: float, figures: dict[str, float]) -> None:
            nonlocal last
            now = time.monotonic()
            if not duration or run.stop_reason is not None or now - last < PROGRESS_EVERY:
                return
            last = now
            sent = {key: round(value, 2) for key, value in figures.items()}
            speed = figures.get("speed")
            if speed:
                # Media seconds left at the current speed: what the encode has left.
                sent["eta_seconds"] = round(max(duration - seconds, 0.0) / speed, 1)
            self.progress(run, min(99.9, 100.0 * seconds / duration), sent)
            log.debug("job %s: %.1f/%.1f s, %s", run.job_id, seconds, duration, sent)

        return on_progress
