"""HTTP requests whose response headers must all arrive within their timeout.

urllib's timeout bounds each silence of the socket, not the whole exchange: a server that drips
its headers (or a TLS handshake) one byte a second would hold a request for as long as it liked.
`open_url` gives the whole header exchange the same deadline, after which a timer shuts the
socket down and the request fails with a TimeoutError. Downloads (`vitkit.download`) and streamed
shards (`vitkit.data.shards`) both open their URLs here; the body's pace is the reader's to check.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.request


def open_url(
    url: str, *, headers: dict[str, str] | None = None, timeout: float
) -> http.client.HTTPResponse:
    """`urllib.request.urlopen` of `url` with `headers`, whose response headers must come within
    `timeout` seconds, as must every read after; HTTPError for an error status, as urlopen."""
    # Built per request: its proxy handler reads $http_proxy and the like when built.
    opener = urllib.request.build_opener(_HTTPHandler, _HTTPSHandler)
    return opener.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout)


class _HeadersInTime(http.client.HTTPConnection):
    """A connection whose server must send all of its response headers (and finish a TLS
    handshake) within the timeout of connecting. The timeout alone bounds each silence, so a
    server dripping its headers a byte a second would hold the request as long as it liked; a
    timer shuts the socket down instead, which ends the read that waits on it."""

    _timer: threading.Timer | None = None
    _expired = False

    def connect(self) -> None:
        self._timer = threading.Timer(self.timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()
        try:
            super().connect()
        except OSError:
            if self._expired:  # a TLS handshake dripped
                raise self._too_slow() from None
            raise

    def _expire(self) -> None:
        self._expired = True
        if (sock := self.sock) is not None:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    def getresponse(self) -> http.client.HTTPResponse:
        try:
            response = super().getresponse()
        except (OSError, http.client.HTTPException):
            if self._expired:
                raise self._too_slow() from None
            raise
        finally:
            self._stop_timer()
        if self._expired:  # the shut socket read as the end of the headers
            response.close()
            raise self._too_slow()
        return response

    def _too_slow(self) -> TimeoutError:
        return TimeoutError(
            f"no complete response headers within {self.timeout:g} s (VITKIT_HTTP_TIMEOUT)"
        )

    def close(self) -> None:
        self._stop_timer()
        super().close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _HTTPSHeadersInTime(_HeadersInTime, http.client.HTTPSConnection):
    """_HeadersInTime over TLS."""


class _HTTPHandler(urllib.request.HTTPHandler):
    """urllib's http:// handler, with connections that give up on headers that take too long."""

    def do_open(
        self, http_class: type, req: urllib.request.Request, **kwargs: object
    ) -> http.client.HTTPResponse:
        return super().do_open(_HeadersInTime, req, **kwargs)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    """urllib's https:// handler, with connections that give up on headers that take too long."""

    def do_open(
        self, http_class: type, req: urllib.request.Request, **kwargs: object
    ) -> http.client.HTTPResponse:
        return super().do_open(_HTTPSHeadersInTime, req, **kwargs)
