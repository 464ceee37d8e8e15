"""The frame index of an MP4/MOV file from its sample tables, without reading its media data.

Demuxing a 24 h recording to plan its segments reads every packet of tens of GB. The `moov` box
already lists each sample's decode-time step (stts), composition offset (ctts), sync flag (stss),
size (stsz) and place (stsc + stco/co64): this reads the top-level box headers and `moov` only.

FFmpeg's timestamps are the tables' shifted by what the edit list and its own bookkeeping say;
rather than re-derive every rule, `packets.index_packets` takes the shift from the demuxer's first
packet and uses this index only when the demuxer agrees with it packet for packet at the head and
the tail of the file. Files this does not read (fragmented MP4, several edits, 'stz2' sizes, no
video track) give None.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass(frozen=True)
class SampleTable:
    """A video track's samples in decode order, timestamps in the track's timescale, unshifted."""

    dts: np.ndarray  # int64 (n,)
    pts: np.ndarray  # int64 (n,): dts + composition offset
    key: np.ndarray  # bool (n,)
    pos: np.ndarray  # int64 (n,): byte offset in the file
    size: np.ndarray  # int64 (n,)
    duration: np.ndarray  # int64 (n,): the sample's decode-time step
    timescale: int


def read_sample_table(fh: BinaryIO) -> SampleTable | None:
    """The first video track's samples, or None when the file is not a plain MP4/MOV this reads."""
    moov = None
    end = fh.seek(0, 2)
    for kind, start, stop in _boxes(_file_reader(fh), end):
        if kind in (b"moof", b"mfra"):
            return None  # fragmented: the samples are listed beside the media, not in moov
        if kind == b"moov":
            fh.seek(start)
            moov = fh.read(stop - start)
    if moov is None:
        return None
    for trak in _children(moov, b"trak"):
        boxes = _tree(trak)
        handler = boxes.get(b"hdlr")
        if handler is not None and handler[8:12] == b"vide":
            return _track(boxes, end)
    return None


def _boxes(read: Callable[[int, int], bytes], end: int):
    """(type, payload start, payload end) of the boxes laid end to end in [0, end) of what
    `read(position, count)` reads: the file (its top level, mdat never read) or a box's payload."""
    pos = 0
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", read(pos, 8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", read(pos + 8, 8))[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return  # a truncated or broken box: what follows cannot be trusted
        yield kind, pos + header, pos + size
        pos += size


def _file_reader(fh: BinaryIO) -> Callable[[int, int], bytes]:
    def read(pos: int, count: int) -> bytes:
        fh.seek(pos)
        return fh.read(count)
    return read


def _children(data: bytes, kind: bytes | None = None):
    """Payloads of the boxes laid end to end in `data` (of one kind, or all as (kind, payload))."""
    for name, start, stop in _boxes(lambda pos, count: data[pos:pos + count], len(data)):
        if kind is None:
            yield name, data[start:stop]
        elif name == kind:
            yield data[start:stop]


def _tree(data: bytes) -> dict[bytes, bytes]:
    """Every leaf box under a track by type (the first of each), container boxes walked through."""
    found: dict[bytes, bytes] = {}
    for name, payload in _children(data):
        if name in _CONTAINERS:
            for inner, leaf in _tree(payload).items():
                found.setdefault(inner, leaf)
        else:
            found.setdefault(name, payload)
    return found


def _track(boxes: dict[bytes, bytes], file_size: int) -> SampleTable | None:
    """Counts in the tables are checked against each other and the file's size before anything is
    allocated from them: a broken header must not ask for gigabytes."""
    needed = (b"mdhd", b"stts", b"stsz", b"stsc")
    if any(name not in boxes for name in needed) or (b"stco" not in boxes and b"co64" not in boxes):
        return None
    if not _one_edit(boxes.get(b"elst")):
        return None
    mdhd = boxes[b"mdhd"]
    timescale = struct.unpack_from(">I", mdhd, 20 if mdhd[0] == 1 else 12)[0]
    size = _sizes(boxes[b"stsz"], file_size)
    if size is None or len(size) == 0 or not timescale:
        return None
    n = len(size)
    step = _runs(boxes[b"stts"], np.dtype(">u4"), n)
    if step is None:
        return None
    dts = np.concatenate([[0], np.cumsum(step[:-1], dtype=np.int64)])
    offset = np.zeros(n, np.int64)
    if b"ctts" in boxes:
        # Version 0 offsets are unsigned by the letter of the format, signed in practice (FFmpeg reads both so).
        offset = _runs(boxes[b"ctts"], np.dtype(">i4"), n)
        if offset is None:
            return None
    key = np.ones(n, bool)
    if b"stss" in boxes:
        count = struct.unpack_from(">I", boxes[b"stss"], 4)[0]
        sync = np.frombuffer(boxes[b"stss"], ">u4", count, 8).astype(np.int64) - 1
        if np.any((sync < 0) | (sync >= n)):
            return None
        key = np.zeros(n, bool)
        key[sync] = True
    pos = _offsets(boxes, size)
    if pos is None:
        return None
    return SampleTable(dts=dts, pts=dts + offset, key=key, pos=pos, size=size, duration=step, timescale=timescale)


def _one_edit(elst: bytes | None) -> bool:
    """No edit list, or one edit at normal rate after at most one empty edit (a start delay):
    a single shift of every timestamp."""
    if elst is None:
        return True
    version, count = elst[0], struct.unpack_from(">I", elst, 4)[0]
    entry = struct.Struct(">Qqi" if version == 1 else ">Iii")
    edits = [entry.unpack_from(elst, 8 + k * entry.size) for k in range(min(count, 3))]
    if edits and edits[0][1] == -1:
        edits = edits[1:]  # an empty edit first: the track starts later, all of it
    return count <= 2 and len(edits) == 1 and edits[0][1] >= 0 and edits[0][2] == 1 << 16


def _runs(box: bytes, value: np.dtype, n: int) -> np.ndarray | None:
    """(count, value) pairs of stts/ctts expanded to one int64 value for each of the n samples."""
    count = struct.unpack_from(">I", box, 4)[0]
    pairs = np.frombuffer(box, np.dtype([("n", ">u4"), ("v", value)]), count, 8)
    counts = pairs["n"].astype(np.int64)
    if counts.sum() != n:
        return None
    return np.repeat(pairs["v"].astype(np.int64), counts)


def _sizes(stsz: bytes, file_size: int) -> np.ndarray | None:
    fixed, count = struct.unpack_from(">II", stsz, 4)
    if fixed:
        return np.full(count, fixed, np.int64) if count * fixed <= file_size else None
    return np.frombuffer(stsz, ">u4", count, 12).astype(np.int64)


def _offsets(boxes: dict[bytes, bytes], size: np.ndarray) -> np.ndarray | None:
    """Each sample's byte offset: its chunk's offset plus the sizes of the samples before it there."""
    if b"co64" in boxes:
        chunks = np.frombuffer(boxes[b"co64"], ">u8", struct.unpack_from(">I", boxes[b"co64"], 4)[0], 8)
    else:
        chunks = np.frombuffer(boxes[b"stco"], ">u4", struct.unpack_from(">I", boxes[b"stco"], 4)[0], 8)
    chunks = chunks.astype(np.int64)
    stsc = boxes[b"stsc"]
    rows = np.frombuffer(stsc, np.dtype([("first", ">u4"), ("n", ">u4"), ("desc", ">u4")]),
                         struct.unpack_from(">I", stsc, 4)[0], 8)
    first = rows["first"].astype(np.int64) - 1
    if len(first) == 0 or first[0] != 0 or np.any(np.diff(first) <= 0) or first[-1] >= len(chunks):
        return None
    runs = np.diff(np.append(first, len(chunks)))
    per_chunk = np.repeat(rows["n"].astype(np.int64), runs)
    if per_chunk.sum() != len(size):
        return None
    chunk = np.repeat(np.arange(len(chunks)), per_chunk)
    before = np.concatenate([[0], np.cumsum(size)[:-1]])  # bytes of all samples before each
    chunk_first = np.concatenate([[0], np.cumsum(per_chunk)[:-1]])  # each chunk's first sample
    return chunks[chunk] + before - before[chunk_first[chunk]]
