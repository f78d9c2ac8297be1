"""gunicorn config for ``gunicorn -c gunicorn.conf.py wsgi:app``.

The same settings ``dispatch-server`` uses (the backend's workers, gthread, threads
from the DistConv settings); prefer ``dispatch-server``, which also refuses a damaged or
already-owned state file with exit status 1 before gunicorn starts.
"""

import shutil

from dispatch.config.settings import load_settings
from dispatch.runtime.gunicorn_config import options, share_metrics

_settings = load_settings([])
_options = options(_settings)

bind = _options["bind"]
workers = _options["workers"]  # as the backend allows: one for the embedded journal
worker_class = _options["worker_class"]  # gthread, refusals in the JSON error shape
limit_request_line = _options["limit_request_line"]
limit_request_fields = _options["limit_request_fields"]
limit_request_field_size = _options["limit_request_field_size"]
threads = _options["threads"]
graceful_timeout = _options["graceful_timeout"]
timeout = _options["timeout"]
keepalive = _options["keepalive"]
preload_app = _options["preload_app"]
max_requests = _options["max_requests"]
accesslog = _options["accesslog"]
errorlog = _options["errorlog"]
logger_class = _options["logger_class"]
loglevel = _options["loglevel"]
proc_name = _options["proc_name"]
control_socket_disable = _options["control_socket_disable"]
worker_exit = _options["worker_exit"]
child_exit = _options["child_exit"]


_metrics_folder = share_metrics(_settings)
if _metrics_folder is not None:

    def on_exit(server):  # noqa: ANN001, ANN201 - gunicorn's hook signature
        shutil.rmtree(_metrics_folder, ignore_errors=True)


def post_worker_init(worker):  # noqa: ANN001, ANN201 - gunicorn's hook signature
    from dispatch.runtime.logs import configure_logging

    configure_logging(_settings)
    _options["post_worker_init"](worker)
