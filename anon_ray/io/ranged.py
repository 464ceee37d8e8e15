"""Part of a remote object, read with ranged GETs into a sparse local file, block by block.

A segment worker needs only its byte range of a video plus the container's header and index:
the decoder reads through file objects opened here, and each block is fetched once per segment
however many decoders read it (a segment decodes its range twice, concurrently). Inside the
segment's byte range (its plan's read-ahead hint) a miss fetches a run of blocks in one GET;
outside it (the header, the index) one block at a time, so a 24 h recording's moov or cues cost
what the demuxer actually reads of them.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading

from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from anon_ray.io.uri import ObjectChangedError

BLOCK = 256 * 1024
MAX_RUN = 8 * 1024 * 1024  # one GET's most: a stalled connection costs at most this much again
ATTEMPTS = 3  # a ranged GET whose body breaks off mid-transfer is retried (botocore retries only the request)


class RangedObject:
    """One version of an object (`etag`), read in blocks into `local_path` (sparse, removed at close).

    Opened by every decoder through `open()`; `fetched` counts the bytes transferred so far.
    """

    def __init__(self, client: BaseClient, bucket: str, key: str, etag: str, size: int, local_path: str,
                 hint: tuple[int, int] = (-1, -1)) -> None:
        self.client, self.bucket, self.key, self.etag, self.size = client, bucket, key, etag, size
        self.hint = hint
        self.fetched = 0
        self.requests = 0
        self._present = bytearray(-(-size // BLOCK))
        self._lock = threading.Lock()
        self._path = local_path
        self._fd = os.open(local_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self._fd, size)

    def open(self) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self), buffer_size=64 * 1024)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.remove(self._path)

    def __enter__(self) -> RangedObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_at(self, pos: int, n: int) -> bytes:
        n = max(0, min(n, self.size - pos))
        if n:
            self._ensure(pos // BLOCK, (pos + n - 1) // BLOCK)
        return os.pread(self._fd, n, pos)

    def _ensure(self, first: int, last: int) -> None:
        with self._lock:  # the other decoder usually wants the same blocks next: it waits, then finds them
            b = first
            while b <= last:
                if self._present[b]:
                    b += 1
                    continue
                end = self._run_end(b, last)
                self._get(b, end)
                b = end + 1

    def _run_end(self, b: int, last: int) -> int:
        """Last block of the GET that starts at missing block `b` and covers up to `last`."""
        lo, hi = self.hint
        limit = last
        if lo >= 0 and lo // BLOCK <= b < -(-hi // BLOCK):
            limit = max(last, -(-hi // BLOCK) - 1)  # read ahead up to the segment's last byte
        limit = min(limit, b + MAX_RUN // BLOCK - 1, len(self._present) - 1)
        end = b
        while end < limit and not self._present[end + 1]:
            end += 1
        return end

    def _get(self, first: int, last: int) -> None:
        start, stop = first * BLOCK, min((last + 1) * BLOCK, self.size)
        for attempt in range(ATTEMPTS):
            try:
                self.requests += 1
                response = self.client.get_object(Bucket=self.bucket, Key=self.key, IfMatch=f'"{self.etag}"',
                                                  Range=f"bytes={start}-{stop - 1}")
                with response["Body"] as body:
                    data = body.read()
                break
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("412", "PreconditionFailed"):
                    raise ObjectChangedError(
                        f"s3://{self.bucket}/{self.key} changed since it was listed (ETag {self.etag})") from None
                raise
            except BotoCoreError:
                if attempt == ATTEMPTS - 1:
                    raise
        if len(data) != stop - start:
            raise OSError(f"ranged GET of s3://{self.bucket}/{self.key} returned {len(data)} of {stop - start} bytes")
        os.pwrite(self._fd, data, start)
        self.fetched += len(data)
        self._present[first:last + 1] = b"\x01" * (last + 1 - first)


class _Reader(io.RawIOBase):
    """A file position over a RangedObject (each decoder has its own)."""

    def __init__(self, obj: RangedObject) -> None:
        self._obj = obj
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self._obj.read_at(self._pos, len(buf))
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos
