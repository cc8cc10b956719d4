"""File helpers shared by every layer: atomic writes, reading (compressed) text, content hashes.

Atomic means: write to a temporary file in the same directory, fsync, then `os.replace`, so a
crash leaves either the old file or the new one, never half of one.

Reading input files (`open_binary`, `open_text`, `open_text_bytes`):
- Compression is detected by magic bytes, never by name: gzip (multi-member too, so BGZF and
  `cat a.gz b.gz`), bzip2, xz, zstd (through pyarrow's codec, a project dependency imported
  only when a zstd file is opened) and a zip archive holding one file are read; anything else
  is read as it is.
- Text comes in UTF-8 (a byte-order mark is dropped) or UTF-16/UTF-32 with a byte-order mark
  (transcoded to UTF-8). Bytes that are not UTF-8 are an error naming the line, never replaced
  silently; NUL bytes in the first 4 KiB mean the file is not text at all.
- Every failure while opening or reading becomes one `InputError` naming the file and a reason:
  `file_not_found`, `is_a_directory`, `unreadable_file` (permissions, I/O errors),
  `truncated_file` (a compressed stream that ends before its end-of-stream marker, as an
  interrupted download leaves it), `corrupt_compressed_file`, `unsupported_archive`,
  `binary_file`, `not_utf8` (`undecodable_text` for UTF-16/32). Callers add the record that
  was being read when the stream broke.

Standard library only (plus pyarrow for zstd, see above); imports `bsm_ray.errors`, a leaf.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from bsm_ray.errors import InputError

# (magic bytes at offset 0, format name); zip's local-file header, Parquet's leading magic.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"PAR1", "parquet"),
)
COMPRESSIONS = ("gzip", "bzip2", "xz", "zstd", "zip")
# Byte-order marks, longest first (the UTF-32-LE mark starts with the UTF-16-LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_SNIFF_BYTES = 4096


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --- opening input files ------------------------------------------------------------------------


def _open_file(path: str) -> IO[bytes]:
    """`open(path, "rb")`, with every way it can fail as an `InputError`."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, None, "file_not_found") from None
    except IsADirectoryError:
        raise InputError(path, None, "is_a_directory", "a file was expected") from None
    except OSError as exc:  # PermissionError, EIO, ...
        raise InputError(path, None, "unreadable_file", exc.strerror or str(exc)) from None


def check_readable_file(path: str | os.PathLike) -> None:
    """Raise `InputError` unless `path` is a regular file this process can read."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(path, None, "is_a_directory", "a file was expected")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(path, None, "not_a_regular_file", "a FIFO, socket or device")
    _open_file(path).close()


def sniff_format(path: str | os.PathLike) -> str | None:
    """The compression (gzip, bzip2, xz, zstd, zip) or 'parquet' named by the file's first
    bytes, or None for anything else (plain text, presumably)."""
    with _open_file(os.fspath(path)) as fh:
        try:
            head = fh.read(8)
        except OSError as exc:
            raise InputError(path, None, "unreadable_file", exc.strerror or str(exc)) from None
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def _read_error(path: str, fmt: str | None, exc: BaseException) -> InputError:
    """The `InputError` for an exception raised while reading (decompressing) `path`."""
    if fmt is not None and (isinstance(exc, EOFError) or "truncated" in str(exc).lower()):
        return InputError(
            path, None, "truncated_file",
            f"the {fmt} stream ends before its end-of-stream marker: the file was cut short, "
            "as by an interrupted download or copy",
        )  # fmt: skip
    if fmt is None:
        return InputError(path, None, "unreadable_file", _first_line(exc))
    return InputError(path, None, "corrupt_compressed_file", f"{fmt}: {_first_line(exc)}")


# What decompressors and files raise on bad data or I/O failures (gzip.BadGzipFile and bz2's
# "Invalid data stream" are OSErrors; pyarrow's zstd codec raises OSError too).
_READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zipfile.BadZipFile)


class _CheckedReader(io.RawIOBase):
    """A raw byte stream over a (decompressing) reader whose failures become `InputError`s."""

    def __init__(self, path: str, fmt: str | None, stream, closers: list) -> None:
        super().__init__()
        self._path, self._fmt, self._stream, self._closers = path, fmt, stream, closers
        # One decompressed chunk per call where the reader can: what was decoded before a
        # failure reaches the caller first (readinto would try to fill the buffer, then raise
        # and lose it), so a reader knows which record the file broke off in.
        self._readinto = getattr(stream, "readinto1", None) or stream.readinto

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._readinto(buffer)
        except _READ_ERRORS as exc:
            raise _read_error(self._path, self._fmt, exc) from None

    def close(self) -> None:
        if not self.closed:
            for closer in self._closers:
                with contextlib.suppress(Exception):
                    closer.close()
        super().close()


def _decompressing(path: str, fmt: str | None) -> tuple[object, list]:
    """(a reader of the file's decompressed bytes, the objects to close afterwards)."""
    raw = _open_file(path)
    try:
        if fmt == "gzip":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # reads every member in turn
            return stream, [stream, raw]
        if fmt == "bzip2":
            stream = bz2.BZ2File(raw)  # multi-stream too
            return stream, [stream, raw]
        if fmt == "xz":
            stream = lzma.LZMAFile(raw)
            return stream, [stream, raw]
        if fmt == "zstd":
            import pyarrow as pa

            raw.close()
            stream = pa.CompressedInputStream(pa.OSFile(path), "zstd")
            return stream, [stream]
        if fmt == "zip":
            archive = zipfile.ZipFile(raw)
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise InputError(
                    path, None, "unsupported_archive",
                    f"a zip archive of {len(members)} files; give each input file on its own",
                )  # fmt: skip
            stream = archive.open(members[0])
            return stream, [stream, archive, raw]
        return raw, [raw]
    except InputError:
        raw.close()
        raise
    except _READ_ERRORS as exc:
        raw.close()
        raise _read_error(path, fmt, exc) from None


def open_binary(path: str | os.PathLike) -> IO[bytes]:
    """The file's bytes, decompressed (format detected by magic bytes, see the module
    docstring); any failure to open or read it is an `InputError`."""
    path = os.fspath(path)
    fmt = sniff_format(path)
    fmt = fmt if fmt in COMPRESSIONS else None
    stream, closers = _decompressing(path, fmt)
    return io.BufferedReader(_CheckedReader(path, fmt, stream, closers), buffer_size=1 << 20)


def _text_encoding(path: str, fh: io.BufferedReader) -> tuple[str, int]:
    """(encoding, byte-order-mark length) of a text stream, from its first bytes; raises
    `InputError(binary_file)` for NUL bytes in a file without a UTF-16/32 byte-order mark."""
    head = fh.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    if b"\x00" in head:
        raise InputError(
            path, None, "binary_file",
            "NUL bytes in the first 4 KiB: not a text file (or UTF-16 without a byte-order mark)",
        )  # fmt: skip
    return "utf-8", 0


def undecodable_line_error(path: str, line_no: int, line: bytes, exc: UnicodeDecodeError):
    """The `InputError` for a line of `path` whose bytes are not UTF-8."""
    bad = line[exc.start : exc.start + 1]
    return InputError(
        path, f"line {line_no}", "not_utf8",
        f"byte 0x{bad.hex()} at column {exc.start + 1} is not UTF-8 ({exc.reason}); re-encode "
        "the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
    )  # fmt: skip


def _locate_undecodable(path: str, encoding: str, exc: UnicodeDecodeError) -> InputError:
    """Find the first line that does not decode (decoders see blocks, not lines)."""
    if encoding in ("utf-8", "utf-8-sig"):
        with open_binary(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                try:
                    line.decode(encoding if line_no == 1 else "utf-8")
                except UnicodeDecodeError as line_exc:
                    return undecodable_line_error(path, line_no, line, line_exc)
    return InputError(path, None, "undecodable_text", f"not valid {encoding}: {exc.reason}")


class _CheckedText(io.TextIOWrapper):
    """A text stream whose decoding errors are `InputError(not_utf8)` naming the line."""

    def __init__(self, buffer, path: str, encoding: str, newline: str | None) -> None:
        super().__init__(buffer, encoding=encoding, errors="strict", newline=newline)
        self._path = path

    def _error(self, exc: UnicodeDecodeError) -> InputError:
        return _locate_undecodable(self._path, self.encoding, exc)

    def read(self, size: int | None = -1) -> str:
        try:
            return super().read(size)
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None

    def readline(self, size: int = -1) -> str:  # type: ignore[override]
        try:
            return super().readline(size)
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None

    def __next__(self) -> str:
        try:
            return super().__next__()
        except UnicodeDecodeError as exc:
            raise self._error(exc) from None


def open_text(path: str | os.PathLike) -> IO[str]:
    """A text file (any compression above) as str, universal newlines (LF, CRLF, CR)."""
    path = os.fspath(path)
    fh = open_binary(path)
    try:
        encoding, _bom = _text_encoding(path, fh)
    except InputError:
        fh.close()
        raise
    return _CheckedText(fh, path, encoding, newline=None)


class _Utf8Transcoder(io.RawIOBase):
    """UTF-8 bytes of a text stream in another encoding (UTF-16/32 files, line ends kept)."""

    def __init__(self, text: IO[str]) -> None:
        super().__init__()
        self._text, self._pending = text, b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chars = self._text.read(max(1, len(buffer) // 4))
            if not chars:
                return 0
            self._pending = chars.encode("utf-8")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._text.close()
        super().close()


def open_text_bytes(path: str | os.PathLike) -> IO[bytes]:
    """A text file's bytes in UTF-8 (or ASCII-compatible) form, for byte-level parsers: any
    compression above, a UTF-8 byte-order mark dropped, UTF-16/32 transcoded; line ends are
    left as they are (LF, CRLF or CR) and bytes are not decoded (non-UTF-8 bytes stay)."""
    path = os.fspath(path)
    fh = open_binary(path)
    try:
        encoding, bom = _text_encoding(path, fh)
        if encoding == "utf-8-sig":
            fh.read(bom)
        elif encoding != "utf-8":
            text = _CheckedText(fh, path, encoding, newline="")
            return io.BufferedReader(_Utf8Transcoder(text), buffer_size=1 << 20)
    except BaseException:
        fh.close()
        raise
    return fh


def numbered_lines(stream: IO, first_line: int = 1) -> Iterator[tuple[int, str | bytes]]:
    """(1-based line number, line) of an opened input whose first line is `first_line`; a read
    failure (a truncated .gz, say) raises its `InputError` naming the line the file broke off in."""
    lines = iter(stream)
    line_no = first_line - 1
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except InputError as exc:
            raise exc.at(f"line {line_no + 1}") from None
        line_no += 1
        yield line_no, line


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


class _RangeReader(io.RawIOBase):
    """The bytes [start, stop) of a plain file (the share of one unit of work)."""

    def __init__(self, path: str, start: int, stop: int) -> None:
        super().__init__()
        self._path, self._left = path, stop - start
        self._fh = _open_file(path)
        self._fh.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer)[: min(len(buffer), self._left)]
        try:
            n = self._fh.readinto(view)
        except OSError as exc:
            raise InputError(self._path, None, "unreadable_file", _first_line(exc)) from None
        self._left -= n or 0
        return n or 0

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def open_byte_range(path: str | os.PathLike, start: int, stop: int) -> IO[bytes]:
    """Bytes [start, stop) of a plain (uncompressed) UTF-8 file, as `open_text_bytes` gives
    them: the range holding the file's start gets the same checks (NUL bytes, byte-order mark).
    Only files the preparation planner found splittable are read by range (see `ingest/units`)."""
    path = os.fspath(path)
    if start == 0:
        fh = open_text_bytes(path)  # the checks of the file's first bytes, as for the whole
        fh.close()
    return io.BufferedReader(_RangeReader(path, start, stop), buffer_size=1 << 20)


def open_text_range(path: str | os.PathLike, start: int, stop: int) -> IO[str]:
    """`open_text` over bytes [start, stop) of a plain UTF-8 file (see `open_byte_range`)."""
    path = os.fspath(path)
    return _CheckedText(open_byte_range(path, start, stop), path, "utf-8", newline=None)
