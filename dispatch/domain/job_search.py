"""What a search for jobs asks (the dashboard's jobs page), and what each filter
means, for every backend: a status; a codec family (``h264`` also finds ``libx264``,
``codecs.family``); an engine that holds or held the job; text anywhere in the id,
source URL or error message, in any case. An empty field matches everything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dispatch.domain import codecs
from dispatch.domain.models import Job


@dataclass(frozen=True)
class JobFilter:
    status: str = ""
    codec: str = ""
    engine: str = ""
    text: str = ""

    @property
    def indexed(self) -> bool:
        """Whether only the status filters (an index answers it without a scan)."""
        return not (self.codec or self.engine or self.text)

    def args(self) -> dict[str, str]:
        """The filter as query arguments (for links that keep it)."""
        return {key: value for key, value in (("status", self.status), ("codec", self.codec),
                                              ("engine", self.engine), ("q", self.text))
                if value}


def matcher(where: JobFilter,
            ran_on: Callable[[Job], bool] | None) -> Callable[[Job], bool]:
    """A predicate for the codec and text filters, and the engine filter given as
    ``ran_on`` (how a backend knows which jobs an engine held is its own)."""
    family = codecs.family(where.codec) if where.codec else None
    in_family: dict[str, bool] = {}  # per codec name: a farm has a handful
    text = where.text.lower() or None

    def matches(job: Job) -> bool:
        if where.status and job.status != where.status:
            return False
        if family is not None:
            codec = job.target_codec
            found = in_family.get(codec)
            if found is None:
                found = in_family[codec] = codecs.family(codec) == family
            if not found:
                return False
        if ran_on is not None and not ran_on(job):
            return False
        return text is None or (
            text in job.job_id.lower() or text in job.source_url.lower()
            or (job.error_message is not None and text in job.error_message.lower()))

    return matches
