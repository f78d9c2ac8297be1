"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

from dispatch.bootstrap import wsgi_app

app = wsgi_app()
