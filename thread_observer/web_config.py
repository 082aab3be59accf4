"""Protecting /metrics: a bearer token a scrape must present, and TLS.

/metrics names every watched pod and the host names its processes look up. Listening on
127.0.0.1 (--listen), a NetworkPolicy, a bearer token and TLS each narrow who may read it.
/healthz and /readyz stay open: the kubelet's probes carry no token, and they tell only the
backend, the number of processes, the poll loop's progress and why the observer is not alive
or ready (nothing about any target).
"""

from __future__ import annotations

import argparse
import hmac
import os
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

# Only these need the token: every other path (/healthz, /readyz, /) stays open.
PROTECTED_PATHS = frozenset({"/metrics"})


class WebConfigError(ValueError):
    """A token or certificate that cannot be used; the message says which and why."""


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protecting /metrics")
    group.add_argument(
        "--bearer-token-file",
        metavar="FILE",
        help="require 'Authorization: Bearer TOKEN' on /metrics, TOKEN being this file's "
        "content (read again when the file changes, so a rotated Secret applies)",
    )
    group.add_argument(
        "--tls-cert-file", metavar="FILE", help="serve HTTPS with this certificate chain (PEM)"
    )
    group.add_argument(
        "--tls-key-file", metavar="FILE", help="the private key of --tls-cert-file (PEM)"
    )


class BearerToken:
    """The token in a file, read again whenever the file's modification time changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._token = b""
        self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if stamp == self._stamp:
                return
            token = self.path.read_bytes().strip()
        except OSError as err:
            raise WebConfigError(f"--bearer-token-file {self.path}: {err.strerror}") from None
        if not token:
            raise WebConfigError(f"--bearer-token-file {self.path}: the file is empty")
        self._token, self._stamp = token, stamp

    def accepts(self, header: str | None) -> bool:
        # A Secret being rewritten may be missing or empty for a moment: keep the last token.
        with suppress(WebConfigError):
            self._load()
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self._token)


@dataclass
class WebConfig:
    token: BearerToken | None = None
    ssl_context: ssl.SSLContext | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    def middlewares(self) -> list:
        return [_require_token(self.token)] if self.token else []


def load_web_config(options) -> WebConfig:
    """The protection ``options`` (an ``ObserverOptions``, which checked that both TLS files
    or neither are given) ask for; WebConfigError when it cannot be had."""
    config = WebConfig()
    if options.bearer_token_file:
        config.token = BearerToken(options.bearer_token_file)
    if options.tls_cert_file:
        config.ssl_context = server_ssl_context(options.tls_cert_file, options.tls_key_file)
    return config


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert_file, key_file):
        if not os.access(path, os.R_OK):
            raise WebConfigError(f"cannot read {path}")
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, ValueError) as err:
        raise WebConfigError(
            f"--tls-cert-file {cert_file} / --tls-key-file {key_file}: {err}"
        ) from None
    return context


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _require_token(token: BearerToken):
    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PROTECTED_PATHS and not token.accepts(
            request.headers.get("Authorization")
        ):
            return web.Response(
                status=401,
                text="401: a bearer token is required\n",
                headers={"WWW-Authenticate": 'Bearer realm="thread-observer"'},
            )
        return await handler(request)

    return require_token
