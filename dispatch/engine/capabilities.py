"""What this engine can prove it encodes: each target codec mapped to an encoder of the
local ffmpeg that passed a real one-second test encode, and a benchmark time.

An encoder that ffmpeg lists is not one it can use: a hardware encoder needs its device
and driver, so every candidate is tried before the engine advertises its codec.
"""

from __future__ import annotations

import logging
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from dispatch.domain.codecs import family

log = logging.getLogger("dispatch.engine")

VAAPI_DEVICE = "/dev/dri/renderD128"
TEST_SOURCE = ("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1")
# The benchmark: one fixed encode; its wall time is what the server compares.
BENCH_SOURCE = ("-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=1")
TEST_TIMEOUT = 60.0


@dataclass(frozen=True)
class Encoder:
    """An ffmpeg encoder with the options it needs before the input (a device) and
    for the output (pixel format, speed settings)."""

    name: str
    input_args: tuple[str, ...] = ()
    output_args: tuple[str, ...] = ()

    def args(self, source: tuple[str, ...]) -> list[str]:
        return [*self.input_args, *source, "-c:v", self.name, *self.output_args]


_YUV = ("-pix_fmt", "yuv420p")
_VAAPI_IN = ("-vaapi_device", VAAPI_DEVICE)
_VAAPI_OUT = ("-vf", "format=nv12,hwupload")
_QSV = ("-pix_fmt", "nv12")


def _known(name: str) -> Encoder:
    """The options an encoder is run with; plain ``-c:v NAME`` for one not listed."""
    if name.endswith("_vaapi"):
        return Encoder(name, _VAAPI_IN, _VAAPI_OUT)
    if name.endswith("_qsv"):
        return Encoder(name, (), _QSV)
    if name.endswith("_nvenc"):
        return Encoder(name, (), _YUV)
    return _SOFTWARE.get(name, Encoder(name))


_SOFTWARE = {
    "libx264": Encoder("libx264", (), (*_YUV, "-preset", "medium", "-crf", "23")),
    "libopenh264": Encoder("libopenh264", (), _YUV),
    "libx265": Encoder("libx265", (), (*_YUV, "-preset", "fast", "-crf", "28")),
    # libvpx and libaom are very slow with their defaults (libaom: ~30 s per test second).
    "libvpx-vp9": Encoder("libvpx-vp9", (), (*_YUV, "-crf", "32", "-b:v", "0", "-row-mt", "1",
                                              "-deadline", "good", "-cpu-used", "4")),
    "libsvtav1": Encoder("libsvtav1", (), (*_YUV, "-preset", "8", "-crf", "35")),
    "libaom-av1": Encoder("libaom-av1", (), (*_YUV, "-cpu-used", "8", "-row-mt", "1",
                                              "-crf", "35", "-b:v", "0")),
    "librav1e": Encoder("librav1e", (), (*_YUV, "-speed", "10")),
}

# Preference order per built-in codec: hardware first, as it is the reason to have it.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "h264": ("h264_nvenc", "h264_qsv", "h264_vaapi", "libx264", "libopenh264"),
    "h265": ("hevc_nvenc", "hevc_qsv", "hevc_vaapi", "libx265"),
    "vp9": ("vp9_qsv", "vp9_vaapi", "libvpx-vp9"),
    "av1": ("av1_nvenc", "av1_qsv", "av1_vaapi", "libsvtav1", "libaom-av1", "librav1e"),
}


@dataclass(frozen=True)
class Capabilities:
    """Codec family -> the encoder that passed, and the families advertised (each by
    its name in ``dispatch.domain.codecs``)."""

    encoders: dict[str, Encoder]
    advertised: tuple[str, ...]

    def with_threads(self, threads: int) -> Capabilities:
        """The same encoders, each ffmpeg decoding and encoding on ``threads`` threads
        (0: ffmpeg's own choice, unchanged)."""
        if threads <= 0:
            return self
        limit = ("-threads", str(threads))
        return Capabilities({fam: replace(encoder, input_args=(*limit, *encoder.input_args),
                                          output_args=(*encoder.output_args, *limit))
                             for fam, encoder in self.encoders.items()}, self.advertised)

    def encoder_for(self, target_codec: str) -> Encoder | None:
        """The proven encoder of the job's codec family (``libx264`` and ``h264`` are
        the same family)."""
        return self.encoders.get(family(target_codec))


def test_encode(ffmpeg: str, encoder: Encoder) -> str | None:
    """None when a one-second encode with ``encoder`` succeeds, else why not."""
    command = [ffmpeg, "-hide_banner", "-nostdin", "-v", "error",
               *encoder.args(TEST_SOURCE), "-f", "null", "-"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                timeout=TEST_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {result.returncode}"
    return None


def detect(ffmpeg: str, wanted: tuple[tuple[str, str], ...] | None) -> Capabilities:
    """Try every candidate encoder of every wanted codec (in parallel) and keep, per
    codec, the first in preference order whose test encode passes."""
    requests = wanted if wanted is not None else tuple((codec, "") for codec in CANDIDATES)
    plan: list[tuple[str, str, tuple[str, ...]]] = []  # (codec, family, candidates)
    for codec, encoder in requests:
        if encoder:
            plan.append((codec, family(codec), (encoder,)))
        elif family(codec) in CANDIDATES:
            plan.append((codec, family(codec), CANDIDATES[family(codec)]))
        else:
            plan.append((codec, family(codec), (codec,)))  # an encoder named like the codec
    names = sorted({name for _, _, candidates in plan for name in candidates})
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcome = dict(zip(names, pool.map(lambda n: test_encode(ffmpeg, _known(n)), names),
                           strict=True))
    encoders: dict[str, Encoder] = {}
    advertised: list[str] = []
    for codec, fam, candidates in plan:
        passed = next((name for name in candidates if outcome[name] is None), None)
        for name in candidates:
            if outcome[name] is not None:
                log.info("codec %s: encoder %s unusable: %s", codec, name, outcome[name])
        if passed is None:
            log.warning("codec %s: no encoder passed its test encode; not offered", codec)
            continue
        log.info("codec %s: encoder %s passed its test encode", codec, passed)
        encoders.setdefault(fam, _known(passed))
        # The server matches by family: one name per family, the family's own.
        if fam not in advertised:
            advertised.append(fam)
    return Capabilities(encoders, tuple(advertised))


def benchmark(ffmpeg: str, capabilities: Capabilities) -> float | None:
    """Seconds for the fixed benchmark encode with the h264 encoder (else the first
    proven one); None when it fails."""
    encoder = capabilities.encoders.get("h264") or next(iter(capabilities.encoders.values()),
                                                        None)
    if encoder is None:
        return None
    command = [ffmpeg, "-hide_banner", "-nostdin", "-v", "error", *encoder.args(BENCH_SOURCE),
               "-f", "null", "-"]
    started = time.monotonic()
    try:
        result = subprocess.run(command, capture_output=True, timeout=TEST_TIMEOUT * 5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    elapsed = time.monotonic() - started
    return round(elapsed, 3) if result.returncode == 0 else None
