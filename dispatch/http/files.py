"""The embedded store's own URLs (``--storage local``): PUT an upload's part, GET an
object (with ``Range``). No API key: each URL is signed for one method, one object and
a time (``dispatch.objects.signing``); anything else is ``403`` in the error shape.
Bodies stream to and from disk; the 1 MiB body limit of the API is lifted here only."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, Response, current_app, request, send_file

from dispatch.domain.errors import NotFound, Unavailable
from dispatch.http.body import body_reader
from dispatch.http.errors import BadRequest
from dispatch.objects import LocalStore, StoreError
from dispatch.objects.intake import BadBody

blp = Blueprint("files", __name__, url_prefix="/files")


def _store() -> LocalStore:
    store = current_app.extensions["dispatch"].files.store
    if not isinstance(store, LocalStore):
        raise NotFound("this server's files are in an S3 store")
    return store


def _verify(store: LocalStore, method: str, target: str) -> None:
    store.signer.verify(method, target, request.args.get("expires"),
                        request.args.get("signature"), current_app.extensions["dispatch"].clock())


@blp.route("/parts/<multipart_id>/<int:part_number>/<int:offset>/<int:size>",
           methods=["PUT"])
def put_part(multipart_id: str, part_number: int, offset: int, size: int) -> Response:
    store = _store()
    _verify(store, "PUT", f"parts/{multipart_id}/{part_number}/{offset}/{size}")
    if request.content_length is not None and request.content_length != size:
        raise BadRequest(f"this part is {size} bytes, not {request.content_length}")
    request.max_content_length = size  # this part, streamed (not the API's 1 MiB)
    try:
        etag = store.receive_part(multipart_id, part_number, offset, size,
                                  body_reader(request.environ, request.stream, size))
    except BadBody as exc:
        raise BadRequest(str(exc)) from None
    except StoreError as exc:
        raise NotFound(str(exc)) from None
    except OSError as exc:
        raise Unavailable(f"the file store cannot write: {exc.strerror}") from None
    return Response(status=200, headers={"ETag": f'"{etag}"'})


@blp.route("/o/<path:key>", methods=["GET"])
def get_object(key: str) -> Response:
    store = _store()
    _verify(store, "GET", f"o/{key}")
    path = store.object_path(key)
    if not path.is_file():
        raise NotFound("no such file (removed after its retention)")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return send_file(path, mimetype=kind, conditional=True, download_name=path.name,
                     max_age=0)
