"""Web apps for real servers (uvicorn, gunicorn), each request resolving a host name.

Every request to ``/`` makes one request to ``http://localhost:$BACKEND_PORT/`` (a local
server) by host name, so it resolves ``localhost`` once, with ``getaddrinfo``:

  asgi_app    a plain ASGI app: aiohttp on the threaded resolver (the loop's executor), with
              no DNS cache, so one lookup per request
  flask_app   a Flask (WSGI) app: requests, one new connection and one lookup per request

examples:
  BACKEND_PORT=8080 uvicorn --loop asyncio --workers 2 workloads.web_apps:asgi_app
  BACKEND_PORT=8080 gunicorn -w 2 -k gthread --threads 4 workloads.web_apps:flask_app
  BACKEND_PORT=8080 gunicorn -w 2 -k workloads.web_apps.AsyncioUvicornWorker \\
      workloads.web_apps:asgi_app
"""

import os


def backend_url() -> str:
    return f"http://localhost:{os.environ['BACKEND_PORT']}/"


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["type"] != "http":
        return
    status = await fetch_backend()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": str(status).encode()})


async def fetch_backend() -> int:
    import aiohttp

    connector = aiohttp.TCPConnector(resolver=aiohttp.ThreadedResolver(), use_dns_cache=False)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(backend_url()) as response,
    ):
        await response.read()
        return response.status


def _flask_app():
    try:
        import flask
        import requests
    except ImportError:  # only the gunicorn scenarios need them
        return None
    app = flask.Flask(__name__)

    @app.route("/")
    def index():
        return str(requests.get(backend_url(), timeout=10).status_code)

    return app


flask_app = _flask_app()


def _uvicorn_worker():
    try:
        from uvicorn.workers import UvicornWorker
    except ImportError:
        return None

    class AsyncioUvicornWorker(UvicornWorker):
        """uvicorn's gunicorn worker on asyncio's loop: with uvloop installed, "auto" would
        resolve in libuv's own pool, below Python's socket module."""

        CONFIG_KWARGS = {"loop": "asyncio", "http": "h11"}

    return AsyncioUvicornWorker


AsyncioUvicornWorker = _uvicorn_worker()
