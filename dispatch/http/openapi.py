"""What the OpenAPI document can only say once the settings are known."""

from __future__ import annotations

from flask_smorest import Api

from dispatch.config.settings import Settings
from dispatch.domain.urls import callback_pattern


def document_settings(api: Api, settings: Settings) -> None:
    """``callback_url``: the URLs ``webhook_allowed_hosts`` lets through, or no such
    field at all when callbacks are disabled (the submission schema allows no other
    field, so a client or fuzzer reading the document knows it is refused); an
    upload's largest size."""
    submit = api.spec.components.schemas["JobSubmit"]
    pattern = callback_pattern(settings.webhook_allowed_hosts)
    if pattern is None:
        del submit["properties"]["callback_url"]
    else:
        submit["properties"]["callback_url"]["pattern"] = pattern.pattern
    # An upload's size: at most max_upload_gb (a larger one is a 400).
    upload = api.spec.components.schemas["UploadCreate"]
    upload["properties"]["size"]["maximum"] = int(settings.max_upload_gb * 1e9)
