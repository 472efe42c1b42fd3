"""Tar archives as shards: member headers read from byte ranges, members written with known offsets.

    uncompressed tar, 512-byte blocks:
    [header 512][data, padded to 512][header][data]...[2 zero blocks][padding to 10240]
                 ^ a member's offset: where its data starts; the header is the 512 bytes before it

A GNU long name ('L' member) or a pax header ('x' member) comes before the header it extends, so the
block right before a member's data is always that member's own header. That is what lets a reader
check a member in memory (`header_matches`) and lets an indexer list a remote shard's members with
ranged reads (`scan`), jumping from header to header without reading the data between them.
"""

from __future__ import annotations

import io
import tarfile
from typing import Callable, Iterator, NamedTuple

BLOCK = 512
RECORD = 20 * BLOCK  # tar pads the archive to a multiple of this (GNU tar, Python's tarfile)
_ENCODING = ("utf-8", "surrogateescape")


class Member(NamedTuple):
    """A regular file of the archive: its path, where its data starts, its size in bytes."""

    name: str
    offset: int
    size: int


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def parse_header(block: bytes) -> tarfile.TarInfo | None:
    """The header in a 512-byte block; None for a zero block (the end of the archive).
    Raises ValueError for a block that is not a tar header (a bad checksum, a truncated block)."""
    if len(block) < BLOCK:
        raise ValueError(f"a tar header needs {BLOCK} bytes, got {len(block)}")
    try:
        return tarfile.TarInfo.frombuf(bytes(block[:BLOCK]), *_ENCODING)
    except tarfile.EOFHeaderError:  # a zero block
        return None
    except tarfile.HeaderError as error:
        raise ValueError(f"not a tar header ({error})") from None


def header_matches(data: bytes | memoryview, offset: int, size: int) -> str | None:
    """Why the member said to start at `offset` with `size` bytes is not there in the shard bytes
    `data`, or None when its header (the block before it) is a regular file of that size."""
    if offset < BLOCK or offset + size > len(data):
        return f"bytes {offset}-{offset + size} lie beyond the {len(data)} bytes read"
    try:
        info = parse_header(data[offset - BLOCK:offset])
    except ValueError as error:
        return f"damaged tar header at byte {offset - BLOCK}: {error}"
    if info is None or not info.isreg() or info.size != size:
        found = "a zero block" if info is None else f"{info.name!r} of {info.size} bytes"
        return f"the tar header at byte {offset - BLOCK} is {found}, not a member of {size} bytes"
    return None


class Ranges:
    """Bytes of an archive of `size` bytes by ranged reads, `chunk` bytes at a time from where a read
    starts, the last chunk kept: headers and small members next to each other cost one request.

    read(start, end): the bytes [start, end) of the archive (fewer at its end), one request each.
    """

    def __init__(self, read: Callable[[int, int], bytes], size: int, *, chunk: int = 1 << 20):
        self._read, self.size, self.chunk = read, size, chunk
        self._buffer, self._start = b"", 0  # bytes [_start, _start + len(_buffer))
        self.requests = 0
        self.bytes_read = 0

    def get(self, offset: int, length: int) -> bytes:
        if not (self._start <= offset and offset + length <= self._start + len(self._buffer)):
            self._start = offset
            self._buffer = self._read(offset, min(self.size, offset + max(length, self.chunk)))
            self.requests += 1
            self.bytes_read += len(self._buffer)
        return self._buffer[offset - self._start:offset - self._start + length]


def scan(ranges: Ranges) -> Iterator[Member]:
    """The regular files of a tar, in order, reading the archive only around its headers (members
    larger than a chunk are jumped over). Raises ValueError naming the byte offset where the
    archive stops being a tar (a damaged header, a member cut off by the end of the file)."""
    size = ranges.size
    offset, long_name, pax = 0, None, {}
    while offset + BLOCK <= size:
        try:
            info = parse_header(ranges.get(offset, BLOCK))
        except ValueError as error:
            raise ValueError(f"byte {offset}: {error}") from None
        if info is None:
            return
        data_at = offset + BLOCK
        if data_at + info.size > size:
            raise ValueError(f"byte {offset}: member {info.name!r} needs {info.size} bytes, the archive "
                             f"ends after {size - data_at}")
        if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE):
            payload = ranges.get(data_at, info.size)
            if info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = payload.rstrip(b"\0").decode(*_ENCODING)
            else:
                pax = _pax_records(payload)
        else:
            name = pax.get("path") or long_name or info.name
            info.size = int(pax["size"]) if "size" in pax else info.size
            if info.isreg():
                yield Member(name, data_at, info.size)
            long_name, pax = None, {}
        offset = data_at + _padded(info.size)


def _pax_records(payload: bytes) -> dict[str, str]:
    """The `length key=value\\n` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(payload) and payload[pos:pos + 1] not in (b"", b"\0"):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        key, _, value = payload[space + 1:pos + length - 1].partition(b"=")
        records[key.decode(*_ENCODING)] = value.decode(*_ENCODING)
        pos += length
    return records


class TarBuilder:
    """A tar in memory, member by member, each member's data offset known as it is added.

    Headers are Python's tarfile's (PAX format: plain ustar unless a name needs more), with a fixed
    mtime, owner and mode, so the same members give the same bytes (a rewritten shard is identical).
    """

    def __init__(self):
        self._out = io.BytesIO()
        self.members: list[Member] = []

    def add(self, name: str, data: bytes) -> Member:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        header = info.tobuf(tarfile.PAX_FORMAT, *_ENCODING)
        self._out.write(header)
        member = Member(name, self._out.tell(), len(data))
        self._out.write(data)
        self._out.write(b"\0" * (_padded(len(data)) - len(data)))
        self.members.append(member)
        return member

    def getvalue(self) -> bytes:
        """The archive: the members, two zero blocks, padding to a whole record."""
        end = self._out.tell() + 2 * BLOCK
        return self._out.getvalue() + b"\0" * (2 * BLOCK + (-end) % RECORD)
