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


def nullable_objects(api: Api) -> None:
    """A request's object that may be null, in OpenAPI 3.0's form: apispec writes it
    as ``anyOf`` [any object, the schema], which lets a client or fuzzer send an
    object the schema refuses (a probe's ``audio``)."""
    for name in ("Probe",):
        properties = api.spec.components.schemas[name]["properties"]
        for prop in properties.values():
            choices = prop.get("anyOf")
            if choices and {"type": "object", "nullable": True} in choices:
                ref = next(choice for choice in choices if "$ref" in choice)
                del prop["anyOf"]
                prop.update({"allOf": [ref], "nullable": True})
