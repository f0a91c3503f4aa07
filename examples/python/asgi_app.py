"""An ASGI app for uvicorn under rcluster (see docs/servers.md, "uvicorn"):

    rcluster --listen 127.0.0.1:8080 -- \\
        uvicorn --fd 3 --app-dir examples/python asgi_app:app
"""

import os

WORKER = os.environ.get("RCLUSTER_WORKER_ID", "-")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan: nothing to set up
    body = f"hello from uvicorn worker {WORKER} (pid {os.getpid()})\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
