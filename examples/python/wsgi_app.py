"""A WSGI app for gunicorn under rcluster (see docs/servers.md, "gunicorn"):

    rcluster --listen 127.0.0.1:8080 --ready notify -- \\
        gunicorn --workers 1 --threads 4 --preload --no-control-socket \\
        --chdir examples/python wsgi_app:app
"""

import os

WORKER = os.environ.get("RCLUSTER_WORKER_ID", "-")


def app(environ, start_response):
    body = f"hello from gunicorn worker {WORKER} (pid {os.getpid()})\n".encode()
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]
