"""How the trust layer's bytes arrive: HTTP(S) or a side-load directory, rated and resumable.

python-tuf's ngclient verifies whatever a fetcher hands it; this one adds what a robot on a
flaky link needs: a minimum average rate (a trickling server cannot hold a download open
forever), byte ranges to resume a bundle, and a side-load directory it cannot step out of.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib import parse

from tuf.api import exceptions as tuf_exc
from tuf.ngclient.fetcher import FetcherInterface


class RangeNotHonoured(Exception):
    """A resume was answered 416: the part file is not a prefix the server knows; restart."""


class ResumableFetcher(FetcherInterface):
    """HTTP(S) and local-directory fetcher with a minimum average rate and byte ranges.

    ngclient only asks for whole files (``_fetch``); :meth:`fetch_from` adds an offset for
    resuming bundle downloads.  The rate check defeats a server that trickles a byte just
    often enough to keep a socket timeout from firing.
    """

    def __init__(
        self,
        *,
        local_root: Path | None = None,
        socket_timeout: float = 15.0,
        min_bytes_per_s: float = 4096.0,
        grace_s: float = 10.0,
        chunk_size: int = 256 * 1024,
        user_agent: str = "continuon-brain-ota",
    ) -> None:
        self.local_root = local_root.resolve() if local_root is not None else None
        self.socket_timeout = socket_timeout
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s
        self.chunk_size = chunk_size
        self._user_agent = user_agent
        self._pool: Any = None

    # -- ngclient interface
    def _fetch(self, url: str) -> Iterator[bytes]:
        chunks, _ = self.fetch_from(url, 0)
        return chunks

    # -- ours
    def fetch_from(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        """Chunks of ``url`` from ``offset``; returns (chunks, the offset actually honoured)."""
        scheme = parse.urlsplit(url).scheme
        if scheme == "file":
            return self._rated(self._file_chunks(url, offset)), offset
        if scheme in ("http", "https"):
            return self._http(url, offset)
        raise tuf_exc.DownloadError(f"unsupported URL scheme in {url!r}")

    def _rated(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        start = time.monotonic()
        got = 0
        for chunk in chunks:
            got += len(chunk)
            elapsed = time.monotonic() - start
            if elapsed > self.grace_s and got / elapsed < self.min_bytes_per_s:
                raise tuf_exc.SlowRetrievalError(
                    f"average {got / elapsed:.0f} B/s after {elapsed:.1f} s, below the "
                    f"{self.min_bytes_per_s:.0f} B/s minimum"
                )
            yield chunk

    def _file_chunks(self, url: str, offset: int) -> Iterator[bytes]:
        path = Path(parse.unquote(parse.urlsplit(url).path)).resolve()
        if self.local_root is not None and not path.is_relative_to(self.local_root):
            raise tuf_exc.DownloadError(f"{path} is outside the side-load directory")
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError:
            raise tuf_exc.DownloadHTTPError(f"{path}: not found", 404) from None
        except IsADirectoryError:
            raise tuf_exc.DownloadHTTPError(f"{path}: is a directory", 404) from None

        def gen() -> Iterator[bytes]:
            with f:
                f.seek(offset)
                while chunk := f.read(self.chunk_size):
                    yield chunk

        return gen()

    def _http(self, url: str, offset: int) -> tuple[Iterator[bytes], int]:
        import urllib3

        if self._pool is None:
            self._pool = urllib3.PoolManager(headers={"User-Agent": self._user_agent})
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers=headers,
                preload_content=False,
                timeout=urllib3.Timeout(self.socket_timeout),
                retries=urllib3.Retry(total=0, redirect=3, raise_on_redirect=True),
            )
        except urllib3.exceptions.MaxRetryError as e:
            # NewConnectionError subclasses ConnectTimeoutError: a refused connection is not slow.
            slow = isinstance(e.reason, urllib3.exceptions.TimeoutError) and not isinstance(
                e.reason, urllib3.exceptions.NewConnectionError
            )
            if slow:
                raise tuf_exc.SlowRetrievalError(f"{url}: timed out") from e
            raise tuf_exc.DownloadError(f"{url}: {e.reason}") from e
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_exc.SlowRetrievalError(f"{url}: timed out") from e
        except urllib3.exceptions.HTTPError as e:
            raise tuf_exc.DownloadError(f"{url}: {e}") from e
        if offset and resp.status == 416:
            resp.release_conn()
            raise RangeNotHonoured
        if resp.status >= 400:
            resp.release_conn()
            raise tuf_exc.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        honoured = offset if (offset and resp.status == 206) else 0

        def gen() -> Iterator[bytes]:
            try:
                while True:
                    chunk = resp.read1(self.chunk_size)
                    if not chunk:
                        return
                    yield chunk
            except urllib3.exceptions.TimeoutError as e:
                raise tuf_exc.SlowRetrievalError(f"{url}: stalled") from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                raise tuf_exc.DownloadError(f"{url}: connection broken ({e})") from e
            finally:
                resp.release_conn()

        return self._rated(gen()), honoured
