"""Codec families: which codec and encoder names mean the same output format.

The original server passed a job's codec straight to ffmpeg, so its users submitted
encoder names (``libx264``, ``libvpx-vp9``) as often as codec names (``h264``,
``vp9``), while engines advertise codec names. Matching by family lets a ``libx264``
job run on an engine that advertises ``h264`` and the other way round.

This table is the one place that knows the aliases. A name outside it is its own
family, matched exactly as written (so ``"H264X"`` only matches ``"H264X"``); a name
inside it is recognised whatever its case. A job keeps ``target_codec`` as submitted:
only matching and the reports use the family.
"""

from __future__ import annotations

from collections.abc import Iterable

# family -> every codec or encoder name that produces it (the family name first).
FAMILIES: dict[str, tuple[str, ...]] = {
    "h264": ("h264", "avc", "avc1", "x264", "libx264", "libx264rgb", "libopenh264",
             "h264_nvenc", "h264_qsv", "h264_vaapi", "h264_amf", "h264_videotoolbox",
             "h264_v4l2m2m", "h264_omx"),
    "h265": ("h265", "hevc", "hvc1", "x265", "libx265", "hevc_nvenc", "hevc_qsv",
             "hevc_vaapi", "hevc_amf", "hevc_videotoolbox", "hevc_v4l2m2m"),
    "vp9": ("vp9", "libvpx-vp9", "vp9_qsv", "vp9_vaapi"),
    "vp8": ("vp8", "libvpx", "vp8_vaapi", "vp8_v4l2m2m"),
    "av1": ("av1", "libaom-av1", "libsvtav1", "librav1e", "av1_nvenc", "av1_qsv",
            "av1_vaapi", "av1_amf"),
    "mpeg4": ("mpeg4", "libxvid", "xvid", "mpeg4_v4l2m2m"),
    "prores": ("prores", "prores_ks", "prores_aw", "prores_videotoolbox"),
}

_FAMILY_OF: dict[str, str] = {
    name: family for family, names in FAMILIES.items() for name in names
}


def family(name: str) -> str:
    """The family a codec or encoder name belongs to; a name outside the table is
    its own family."""
    return _FAMILY_OF.get(name.lower(), name)


def families(names: Iterable[str]) -> frozenset[str]:
    """The families of several names (an engine's advertised codecs)."""
    return frozenset(family(name) for name in names)
