"""Where prepared data is written: a local directory or an object-store prefix.

`OutputDir` is the one place that knows the difference. A local directory gets what the
project always did: each file written to a temporary name and renamed into place (atomic on a
POSIX file system). Any other location is a URI that `pyarrow.fs.FileSystem.from_uri`
understands (`s3://bucket/prefix`, `gs://bucket/prefix`, `hdfs://...`): a file is written
locally first, uploaded to a hidden key beside its name, and moved into place (a server-side
copy: the object appears whole or not at all; see `write_file`). Object stores have no rename
of a prefix, so a dataset there is published by writing its manifest last (see
`bsm_ray.ingest.shards`).

Credentials come from the usual places of each store (for S3: the AWS environment variables,
`~/.aws`, an instance role); options go in the URI's query string as pyarrow reads them, e.g.
`s3://bucket/data?endpoint_override=minio:9000&scheme=http` for an S3-compatible server.
`STORAGE_ENV` names the environment variables the preparation forwards to its Ray tasks, so a
worker sees the store as the driver does.

Imports pyarrow; no ray, torch or mlflow.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from bsm_ray.fileio import atomic_path

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
STORAGE_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
)  # fmt: skip
UPLOAD_SUFFIX = ".upload"
"""An object-store upload in flight (`write_file`); one left by a killed process is junk."""


def is_uri(location: str | os.PathLike) -> bool:
    """True for an object-store (or other pyarrow.fs) URI; False for a local path or file://."""
    text = str(location)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def local_path(location: str | os.PathLike) -> Path:
    text = str(location)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def join(location: str, *parts: str) -> str:
    """`location/part/...` for URIs and paths alike (a URI's query string, such as
    `?endpoint_override=host:port&scheme=http`, stays at the end)."""
    if not is_uri(location):
        return str(local_path(location).joinpath(*parts))
    head, sep, query = location.partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def storage_env() -> dict[str, str]:
    """The storage settings of this process that Ray tasks should see too."""
    return {k: os.environ[k] for k in STORAGE_ENV if k in os.environ}


class OutputDir:
    """A directory to write into: local (atomic renames) or a pyarrow.fs URI (atomic uploads)."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = str(location)
        self.remote = is_uri(self.location)
        if self.remote:
            from pyarrow import fs as pafs

            self.fs, self.base = pafs.FileSystem.from_uri(self.location)
            self.base = self.base.rstrip("/")
        else:
            self.fs, self.base = None, str(local_path(self.location))

    @classmethod
    def of(cls, location: str | os.PathLike | OutputDir) -> OutputDir:
        return location if isinstance(location, OutputDir) else cls(location)

    def __repr__(self) -> str:
        return f"OutputDir({self.location!r})"

    def child(self, *parts: str) -> OutputDir:
        return OutputDir(join(self.location, *parts))

    def uri(self, rel: str = "") -> str:
        """The location of `rel` below this directory, as pyarrow readers and messages take it."""
        return join(self.location, rel) if rel else self.location

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    # --- writing ---------------------------------------------------------------------------------

    def write_file(self, rel: str, write: Callable[[Path], None]) -> tuple[int, str]:
        """`write(tmp)` writes the file at a local temporary path; it is then put at `rel`
        atomically. Returns its (size in bytes, sha256)."""
        if not self.remote:
            final = Path(self.base) / rel
            with atomic_path(final) as tmp:
                write(tmp)
                size, digest = _size_and_sha256(tmp)
            return size, digest
        with tempfile.TemporaryDirectory(prefix="bsm-out-") as tmpdir:
            tmp = Path(tmpdir) / Path(rel).name
            write(tmp)
            size, digest = _size_and_sha256(tmp)
            # pyarrow completes an upload whenever its stream closes, also when an exception
            # (a Ray task's cancellation) leaves the `with` midway, and from the destructor:
            # a half-written object would appear under its name. So the upload goes to a
            # hidden key beside it and is then moved into place (a server-side copy, which
            # is atomic); a failed upload is deleted.
            parent, _, name = rel.rpartition("/")
            staged = f"{parent}/" if parent else ""
            staged += f".{name}.{uuid.uuid4().hex[:12]}{UPLOAD_SUFFIX}"
            try:
                with open(tmp, "rb") as src, self.fs.open_output_stream(self._path(staged)) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                self.fs.move(self._path(staged), self._path(rel))
            except BaseException:
                try:
                    self.fs.delete_file(self._path(staged))
                except Exception:  # noqa: BLE001 - the upload's own failure is what is raised
                    pass
                raise
        return size, digest

    def write_text(self, rel: str, text: str) -> None:
        self.write_file(rel, lambda tmp: tmp.write_text(text))

    def makedirs(self, rel: str = "") -> None:
        """A local directory; nothing in an object store (a prefix exists by its objects)."""
        if not self.remote:
            (Path(self.base) / rel).mkdir(parents=True, exist_ok=True)

    # --- reading ---------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        if not self.remote:
            return (Path(self.base) / rel).exists()
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self._path(rel)).type != pafs.FileType.NotFound

    def read_text(self, rel: str) -> str:
        if not self.remote:
            return (Path(self.base) / rel).read_text()
        with self.fs.open_input_stream(self._path(rel)) as fh:
            return fh.read().decode("utf-8")

    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return (Path(self.base) / rel).read_bytes()
        with self.fs.open_input_file(self._path(rel)) as fh:
            return fh.read()

    def files(self, rel: str = "") -> list[str]:
        """Every file below `rel`, as paths relative to this directory (sorted)."""
        if not self.remote:
            root = Path(self.base)
            top = root / rel
            if not top.is_dir():
                return []
            return sorted(str(p.relative_to(root)) for p in top.rglob("*") if p.is_file())
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._path(rel), recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        cut = len(self.base) + 1
        return sorted(i.path[cut:] for i in infos if i.type == pafs.FileType.File)

    def subdirs(self) -> list[str]:
        """Names of the directories directly below this one."""
        if not self.remote:
            root = Path(self.base)
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    # --- removing --------------------------------------------------------------------------------

    def remove(self, rel: str) -> None:
        if not self.remote:
            (Path(self.base) / rel).unlink(missing_ok=True)
        elif self.exists(rel):
            self.fs.delete_file(self._path(rel))

    def remove_tree(self, rel: str = "") -> None:
        if not self.remote:
            shutil.rmtree(Path(self.base) / rel, ignore_errors=True)
        elif self.exists(rel):
            self.fs.delete_dir(self._path(rel))


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return path.stat().st_size, digest.hexdigest()
