"""One canonical view of an uploaded zip, built from its central directory before any check.

torch reads archives with miniz (``PyTorchFileReader``), which looks entries up by
``<root>/<name>`` with no path normalisation but ignoring ASCII letter case; the checks
here read them with Python's ``zipfile``. So that both readers always see the same
entries, the view refuses anything on which they could disagree: names equal when
letter case is ignored, names that are not plain relative UTF-8 paths (absolute, ``..``,
``.``, empty segments, backslashes, control characters, longer than miniz's name
buffer), a local header whose name differs from the central directory's, encrypted or
non-deflate entries, data before the first entry or after the end record, and more than
one top-level folder. Every later lookup goes through :meth:`ZipView.find`, which
ignores case as torch does.

>>> import io, zipfile
>>> buffer = io.BytesIO()
>>> with zipfile.ZipFile(buffer, "w") as archive:
...     archive.writestr("model/data.pkl", b"")
>>> with ZipView.open(buffer.getvalue(), max_uncompressed_bytes=1 << 20) as view:
...     view.root, view.find("DATA.PKL").filename
('model', 'model/data.pkl')
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import BinaryIO

from jacserve.server.errors import InvalidArgument, ResourceExhausted

__all__ = ["MAX_ENTRIES", "MAX_NAME_BYTES", "ZipView"]

MAX_ENTRIES = 100_000
"""Most zip entries an archive may hold."""

MAX_NAME_BYTES = 500
"""Longest entry name accepted (miniz copies names into a 512-byte buffer)."""

_END_RECORD = struct.Struct("<4s4H2LH")  # signature, disks, counts, size, offset, comment
_END_SIGNATURE = b"PK\x05\x06"
_UTF8_FLAG = 0x800
_ENCRYPTED_FLAG = 0x1


def _describe_prefix(head: bytes) -> str:
    return f"it starts with bytes {head[:8].hex(' ')}" if head else "it is empty"


def _raw_name(entry: zipfile.ZipInfo) -> bytes:
    encoding = "utf-8" if entry.flag_bits & _UTF8_FLAG else "cp437"
    return entry.orig_filename.encode(encoding)


def _check_name(raw: bytes) -> str:
    """The entry name as text, or InvalidArgument saying why it is not canonical."""
    shown = raw[:80].decode("utf-8", "backslashreplace")
    if len(raw) > MAX_NAME_BYTES:
        raise InvalidArgument(
            f"archive entry name {shown!r}... is {len(raw)} bytes long; at most {MAX_NAME_BYTES}"
        )
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"archive entry name {shown!r} is not UTF-8") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidArgument(f"archive entry name {name!r} contains a NUL or control character")
    if "\\" in name:
        raise InvalidArgument(f"archive entry name {name!r} contains a backslash")
    if name.startswith("/"):
        raise InvalidArgument(f"archive entry name {name!r} is an absolute path")
    segments = name.split("/")
    if len(segments) < 2:
        raise InvalidArgument(
            f"archive entry {name!r} is not inside the archive's top-level folder"
        )
    for segment in segments:
        if segment in ("", ".", ".."):
            what = "an empty segment" if not segment else f"a {segment!r} segment"
            raise InvalidArgument(f"archive entry name {name!r} has {what}")
    return name


class ZipView:
    """The checked entries of an archive, looked up by relative name ignoring case.

    Use :meth:`open`; the view closes its zip file on exit (an open file passed in is
    left open, at the position it had).
    """

    def __init__(
        self,
        archive: zipfile.ZipFile,
        root: str,
        entries: dict[str, zipfile.ZipInfo],
        restore: tuple[BinaryIO, int],
    ) -> None:
        self.archive = archive
        self.root = root
        self._entries = entries
        self._restore = restore

    @classmethod
    def open(cls, source: bytes | BinaryIO, *, max_uncompressed_bytes: int) -> ZipView:
        """Check the zip structure of ``source`` (bytes or a seekable binary file).

        Raises:
            InvalidArgument: not a zip, or a structure the two readers could disagree on.
            ResourceExhausted: too many entries or too large once uncompressed.
        """
        fileobj: BinaryIO = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
        start = fileobj.tell()
        try:
            archive = _open_zip(fileobj)
        except BaseException:
            fileobj.seek(start)
            raise
        try:
            root, entries = _check_structure(archive, fileobj, max_uncompressed_bytes)
        except BaseException:
            archive.close()
            fileobj.seek(start)
            raise
        return cls(archive, root, entries, (fileobj, start))

    def __enter__(self) -> ZipView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.archive.close()
        fileobj, start = self._restore
        fileobj.seek(start)

    def names(self) -> list[str]:
        """Entry names relative to the top-level folder, as written."""
        return [self.relative(e) for e in self._entries.values()]

    def relative(self, entry: zipfile.ZipInfo) -> str:
        """``entry``'s name without the top-level folder."""
        return entry.orig_filename[len(self.root) + 1 :]

    def find(self, relative: str) -> zipfile.ZipInfo | None:
        """The entry torch would find for ``<root>/<relative>`` (letter case ignored)."""
        return self._entries.get(relative.lower())

    def entries(self) -> list[zipfile.ZipInfo]:
        """All entries, in central-directory order."""
        return list(self._entries.values())

    def read(self, entry: zipfile.ZipInfo) -> bytes:
        """The inflated bytes of ``entry``."""
        return self.archive.read(entry)


def _open_zip(fileobj: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)
    except UnicodeDecodeError:  # a name flagged UTF-8 that is not
        raise InvalidArgument("archive has a zip entry name that is not UTF-8") from None
    except (zipfile.BadZipFile, ValueError, EOFError):
        fileobj.seek(0)
        raise InvalidArgument(
            f"archive is not a zip file ({_describe_prefix(fileobj.read(8))}); upload a file "
            "written by torch.jit.save (TorchScript) or torch.export.save (.pt2)"
        ) from None


def _check_end_record(fileobj: BinaryIO, count: int) -> None:
    """The end record must close the file, with no comment, and count every entry."""
    size = fileobj.seek(0, io.SEEK_END)
    fileobj.seek(max(size - _END_RECORD.size, 0))
    tail = fileobj.read(_END_RECORD.size)
    if len(tail) < _END_RECORD.size or not tail.startswith(_END_SIGNATURE):
        raise InvalidArgument(
            "archive has bytes after the zip's end record (a comment or trailing data); "
            "upload the file exactly as torch wrote it"
        )
    _, disk, cd_disk, _, total, _, _, comment = _END_RECORD.unpack(tail)
    if comment or disk or cd_disk:
        raise InvalidArgument("archive's zip end record has a comment or spans several disks")
    if total != 0xFFFF and total != count:
        raise InvalidArgument(
            f"archive's zip end record counts {total} entries but its directory has {count}"
        )


def _check_structure(
    archive: zipfile.ZipFile, fileobj: BinaryIO, max_uncompressed_bytes: int
) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise ResourceExhausted(
            f"archive has {len(entries)} zip entries; at most {MAX_ENTRIES} are accepted"
        )
    if not entries:
        raise InvalidArgument("archive is an empty zip file")
    uncompressed = sum(e.file_size for e in entries)
    if uncompressed > max_uncompressed_bytes:
        raise ResourceExhausted(
            f"archive would uncompress to {uncompressed} bytes, above the server's limit of "
            f"{max_uncompressed_bytes} (--max-archive-bytes)"
        )
    _check_end_record(fileobj, len(entries))
    if min(e.header_offset for e in entries) != 0:
        raise InvalidArgument("archive has data before its first zip entry")
    by_key: dict[str, zipfile.ZipInfo] = {}
    roots: set[str] = set()
    for entry in entries:
        name = _check_name(_raw_name(entry))
        if entry.flag_bits & _ENCRYPTED_FLAG:
            raise InvalidArgument(f"archive entry {name!r} is encrypted")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InvalidArgument(
                f"archive entry {name!r} uses zip compression method {entry.compress_type}; "
                "torch reads only stored and deflated entries"
            )
        key = name.lower()
        if key in by_key:
            raise InvalidArgument(
                f"archive has duplicate zip entry names ({by_key[key].orig_filename!r} and "
                f"{name!r}; letter case is ignored, as torch's reader does); re-save the model"
            )
        by_key[key] = entry
        roots.add(name.split("/", 1)[0])
        _check_local_header(archive, entry, name)
    if len(roots) != 1:
        raise InvalidArgument(f"archive must have exactly one top-level folder; found {len(roots)}")
    (root,) = roots
    relative = {e.orig_filename[len(root) + 1 :].lower(): e for e in by_key.values()}
    return root, relative


def _check_local_header(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, name: str) -> None:
    """Python's zipfile compares the local header's name with the directory's on open."""
    try:
        archive.open(entry).close()
    except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise InvalidArgument(f"archive entry {name!r} has a broken local header: {exc}") from None
