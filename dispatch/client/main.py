"""``distconv``: the command line. Only click and the settings are imported at start;
each command imports what it needs (httpx, rich) when it runs."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from dispatch import __version__
from dispatch.client import render
from dispatch.client import settings as config
from dispatch.client.api import FAILED, INTERRUPTED, USAGE, Api, Failure, job_path

JOB_STATUSES = ("pending", "assigned", "processing", "completed", "failed", "cancelled")


class Context:
    def __init__(self, server: str | None, api_key: str | None, api_key_file: str | None,
                 config_path: str | None) -> None:
        self.flags = (server, api_key, api_key_file, config_path)
        self._api: Api | None = None

    def api(self) -> Api:
        if self._api is None:
            self._api = Api(config.load(*self.flags))
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()


def command(group: click.Group, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """A subcommand with ``--json``, given the context's API as ``api``."""
    def wrap(body: Callable[..., None]) -> click.Command:
        @click.option("--json", "as_json", is_flag=True,
                      help="Print exactly one JSON document on stdout, no progress.")
        @click.pass_obj
        @functools.wraps(body)
        def run(ctx: Context, *a: Any, **kw: Any) -> None:
            body(ctx, *a, **kw)
        return group.command(*args, **kwargs)(run)
    return wrap


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="distconv",
                      message="%(prog)s %(version)s")
@click.option("--server", metavar="URL", help="The dispatch server [DISTCONV_SERVER; "
              f"default {config.DEFAULT_SERVER}].")
@click.option("--api-key", metavar="KEY", help="API key [DISTCONV_API_KEY].")
@click.option("--api-key-file", metavar="PATH", help="File holding the API key "
              "[DISTCONV_API_KEY_FILE].")
@click.option("--config", "config_path", metavar="PATH", help="Config file (TOML) "
              "[DISTCONV_CLIENT_CONFIG; default ~/.config/distconv/client.toml].")
@click.pass_context
def cli(ctx: click.Context, server: str | None, api_key: str | None,
        api_key_file: str | None, config_path: str | None) -> None:
    """Send video files to a DistConv farm, watch them, and get the results back."""
    ctx.obj = Context(server, api_key, api_key_file, config_path)
    ctx.call_on_close(ctx.obj.close)


@command(cli, "submit")
@click.argument("sources", nargs=-1, required=True)
@click.option("--codec", required=True, help="Target codec (h264, hevc, vp9, av1...).")
@click.option("--priority", type=click.IntRange(-100, 100), help="-100..100, higher first.")
@click.option("--max-retries", type=click.IntRange(0, 100), help="Attempts after a failure.")
@click.option("--chunk-seconds", type=click.IntRange(2, 600), metavar="N",
              help="Encode each video in chunks of about N seconds (2..600) on several "
              "engines at once; the server must support chunked jobs.")
@click.option("--callback-url", metavar="URL", help="Webhook called when the job ends.")
@click.option("--wait", is_flag=True, help="Wait until every job has finished.")
@click.option("--output", "-o", metavar="PATH|DIR", help="With --wait: download each "
              "result to PATH, or into DIR named after its source.")
def submit(ctx: Context, sources: tuple[str, ...], codec: str, priority: int | None,
           max_retries: int | None, chunk_seconds: int | None, callback_url: str | None,
           wait: bool, output: str | None, as_json: bool) -> None:
    """Submit each SOURCE (a local file, uploaded, or an http(s):// URL) as a job."""
    from dispatch.client import submit as submitting

    if output and not wait:
        raise click.UsageError("--output needs --wait")
    if output and len(sources) > 1 and not output.endswith("/") and \
            not os.path.isdir(output):
        raise click.UsageError("with several sources, --output must be a folder")
    found = submitting.read_sources(sources)
    options: dict[str, Any] = {"target_codec": codec, "priority": priority,
                               "max_retries": max_retries, "callback_url": callback_url}
    if chunk_seconds is not None:  # absent otherwise: the Idempotency-Key stays as it was
        options["chunk_seconds"] = chunk_seconds
    api = ctx.api()
    jobs = submitting.submit(api, found, options, quiet=as_json)
    names = {job["job_id"]: source.name for job, source in zip(jobs, found, strict=True)}
    if wait:
        jobs = _finish(api, jobs, names, output, as_json)
    elif not as_json:
        render.say("follow with: distconv wait " + " ".join(job["job_id"] for job in jobs))
    if as_json:
        render.emit_json({"jobs": jobs})
    _exit_for(jobs)


def _finish(api: Api, jobs: list[dict[str, Any]], names: dict[str, str],
            output: str | None, quiet: bool) -> list[dict[str, Any]]:
    """Wait for ``jobs``, then download each completed one when ``output`` is given."""
    from dispatch.client import transfer, watch

    jobs = watch.wait(api, jobs, names, quiet)
    if output:
        for job in jobs:
            if job["status"] == "completed":
                target = transfer.destination(output, job, names.get(job["job_id"]))
                path = transfer.download(api, job, target, quiet)
                job["downloaded_to"] = str(path)
                if not quiet:
                    render.say(f"{names.get(job['job_id'], job['job_id'])}: "
                               f"saved to {path}")
    return jobs


def _exit_for(jobs: list[dict[str, Any]]) -> None:
    """Exit 1 naming each job that failed or was cancelled."""
    bad = [job for job in jobs if job["status"] in ("failed", "cancelled")]
    for job in bad:
        if job["status"] == "cancelled":
            render.say(f"distconv: job {job['job_id']} was cancelled")
        else:
            render.say(f"distconv: job {job['job_id']} failed: "
                          f"{job.get('error_message') or 'no message'}")
    if bad:
        sys.exit(FAILED)


@command(cli, "status")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
def status(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Show jobs as they are now."""
    from dispatch.client import views

    jobs = [ctx.api().job(job_id) for job_id in job_ids]
    if as_json:
        render.emit_json(jobs[0] if len(jobs) == 1 else {"jobs": jobs})
    else:
        views.jobs_detail(jobs)


@command(cli, "wait")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
@click.option("--output", "-o", metavar="PATH|DIR", help="Download each result to PATH, "
              "or into DIR named after its source.")
def wait_(ctx: Context, job_ids: tuple[str, ...], output: str | None,
          as_json: bool) -> None:
    """Wait until the jobs have finished (exit 0 when all completed)."""
    api = ctx.api()
    jobs = _finish(api, [api.job(job_id) for job_id in job_ids], {}, output, as_json)
    if as_json:
        render.emit_json(jobs[0] if len(jobs) == 1 else {"jobs": jobs})
    _exit_for(jobs)


@command(cli, "download")
@click.argument("job_id", metavar="JOB")
@click.option("--output", "-o", metavar="PATH|DIR", default=".", show_default=True,
              help="Where to write the result (a folder: named after the source).")
def download(ctx: Context, job_id: str, output: str, as_json: bool) -> None:
    """Download a completed job's output (checked, written atomically)."""
    from dispatch.client import transfer

    api = ctx.api()
    job = api.job(job_id)
    path = transfer.download(api, job, transfer.destination(output, job, None), as_json)
    if as_json:
        render.emit_json({"job_id": job_id, "path": str(path)})
    else:
        render.say(f"saved to {path}")


@command(cli, "jobs")
@click.option("--status", "status_", type=click.Choice(JOB_STATUSES), help="Only these.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
def jobs(ctx: Context, status_: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List jobs, oldest first."""
    from dispatch.client import views

    page = ctx.api().get("/jobs/", status=status_, limit=limit, offset=offset)
    if as_json:
        render.emit_json(page)
    else:
        views.jobs_table(page)


def _each(ctx: Context, job_ids: tuple[str, ...], method: str, suffix: str,
          done: str, as_json: bool) -> None:
    """One request per job; every job is tried, exit 1 if any was refused."""
    from dispatch.client.api import Refused

    results, refused = [], 0
    for job_id in job_ids:
        try:
            job = ctx.api().send(method, job_path(job_id) + suffix).json()
        except Refused as exc:
            refused += 1
            render.say(f"distconv: job {job_id}: {exc.message}")
            continue
        results.append(job)
        if not as_json:
            render.say(f"job {job_id}: {done}")
    if as_json:
        render.emit_json({"jobs": results})
    if refused:
        sys.exit(FAILED)


@command(cli, "cancel")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
def cancel(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel jobs that have not finished."""
    _each(ctx, job_ids, "DELETE", "", "cancelled", as_json)


@command(cli, "retry")
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB...")
def retry(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Send failed or cancelled jobs back to the queue."""
    _each(ctx, job_ids, "POST", "/retry", "pending again", as_json)


@command(cli, "events")
@click.argument("job_id", metavar="JOB")
def events(ctx: Context, job_id: str, as_json: bool) -> None:
    """A job's history, oldest first."""
    from dispatch.client import views

    history = ctx.api().get(job_path(job_id) + "/events")
    if as_json:
        render.emit_json(history)
    else:
        views.events_table(history)


@command(cli, "engines")
def engines(ctx: Context, as_json: bool) -> None:
    """The farm's engines."""
    from dispatch.client import views

    found = ctx.api().get("/engines/")
    if as_json:
        render.emit_json(found)
    else:
        render.console().print(views.engines_table(found["engines"], {}))


@command(cli, "top")
@click.option("--interval", type=click.FloatRange(0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
def top(ctx: Context, interval: float, as_json: bool) -> None:
    """A live view of the farm until Ctrl-C (with --json: one snapshot)."""
    from dispatch.client import views

    views.top(ctx.api(), interval, as_json)


def main(argv: list[str] | None = None) -> None:
    """The console script: exit 0 done, 1 failed or refused, 2 usage or settings,
    3 server unreachable, 130 interrupted."""
    try:
        status = cli.main(args=argv, prog_name="distconv", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.stderr.write("distconv: interrupted\n")
        sys.exit(INTERRUPTED)
    except config.ConfigError as exc:
        sys.stderr.write(f"distconv: {exc}\n")
        sys.exit(USAGE)
    except Failure as exc:
        sys.stderr.write(f"distconv: {exc.message}\n")
        sys.exit(exc.status)
    except BrokenPipeError:
        sys.exit(FAILED)
    except OSError as exc:  # a full disk, a folder that cannot be written
        sys.stderr.write(f"distconv: {exc}\n")
        sys.exit(FAILED)
    sys.exit(status if isinstance(status, int) else 0)
