"""CPU per service operation, in-process, without HTTP: submit, describe and an
assign+complete pair in memory (no disk), best of 5 rounds of 5,000 each.

Less sensitive than ``run.py`` to what else the machine is doing, so it is the figure
to compare two trees with (run it in each, alternating):

    .venv/bin/python -m bench.service_ops
"""

from __future__ import annotations

import time

from dispatch.config.settings import Settings
from dispatch.service import DispatchService, present

JOB = {"source_url": "http://example.com/input.mp4", "target_codec": "h264", "job_size": 100.5}
ROUNDS = 5
N = 5000


def main() -> None:
    settings = Settings(api_key="k" * 32, job_queue_max_size=10**6, max_concurrent_jobs=10**6)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        service = DispatchService(settings)
        started = time.perf_counter()
        ids = [service.commands.submit_job(JOB).job_id for _ in range(N)]
        submitted = time.perf_counter()
        for job_id in ids:  # the API form, as the view makes it
            present.job(service.queries.describe(service.queries.get_job(job_id)))
        described = time.perf_counter()
        service.commands.heartbeat({"engine_id": "e1"})
        for _ in range(N):
            job = service.commands.assign_job("e1", None).job
            assert job is not None
            service.commands.complete_job(job.job_id, "http://example.com/out.mp4")
        done = time.perf_counter()
        for name, seconds in (("submit", submitted - started),
                              ("describe", described - submitted),
                              ("assign+complete", done - described)):
            best[name] = min(best.get(name, float("inf")), seconds * 1e6 / N)
    print("  ".join(f"{name} {micros:.1f} us" for name, micros in best.items()))


if __name__ == "__main__":
    main()
