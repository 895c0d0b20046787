"""One filesystem layer for everything sensorcast keeps: the archive, the registry, checkpoints and Ray Train
storage are *locations* — a local folder, `file://…`, `s3://bucket/prefix` (AWS, MinIO or any
S3-compatible endpoint) or `gs://bucket/prefix` — opened through `pyarrow.fs`, never through hand-written
HTTP. A local folder is only the zero-setup default; a multi-node cluster needs an object store, because
no other node can read the driver's disk.

Object stores have no rename and no directories, so the writers built on this module follow two rules:
- **an object appears whole or not at all**: `write_bytes` is one PUT (a multipart upload is completed
  only at the end); on a local disk it writes a hidden temporary file and renames it into place;
- **no read-modify-write of a shared object**: where several writers may race (the registry's version
  numbers and champion pointer) each writes a *new, uniquely named* object and `claim()` decides which of
  the racers owns a slot (see its docstring).

Errors of the underlying client become one `StorageError` that names the setting and says what to do.
No torch, no Ray.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from stream.config import StorageSettings


class StorageError(RuntimeError):
    """A location cannot be opened, read or written; the message names the setting and the fix."""


_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://(.*)$")


@dataclass(frozen=True)
class Location:
    """A folder or object: a pyarrow filesystem and a path inside it. Picklable (Ray can carry it)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        sep = "" if self.uri.endswith("/") else "/"
        return Location(self.fs, posixpath.join(self.path, name), f"{self.uri}{sep}{name}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def parent(self) -> Location:
        path = posixpath.dirname(self.path.rstrip("/"))
        return Location(self.fs, path, self.uri[: self.uri.rstrip("/").rfind("/")] or self.uri)

    # -- reading ---------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def _info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as exc:
            raise StorageError(f"cannot stat {self.uri}: {explain(exc)}") from exc

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as fh:
                return bytes(fh.read())
        except FileNotFoundError as exc:
            raise StorageError(f"no object at {self.uri}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri}: {explain(exc)}") from exc

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def files(self, recursive: bool = True) -> list[Location]:
        """Files below this folder, sorted by path; hidden names (`.…`, temporary) are skipped."""
        if self.is_local:  # os.walk: a temporary file renamed away mid-listing is skipped, not an error
            found = []
            for folder, subfolders, names in os.walk(self.path):
                subfolders[:] = sorted(d for d in subfolders if recursive and not d.startswith("."))
                found += [posixpath.join(folder, n) for n in names if not n.startswith(".")]
        else:
            try:
                infos = self.fs.get_file_info(
                    pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
                )
            except OSError as exc:
                raise StorageError(f"cannot list {self.uri}: {explain(exc)}") from exc
            found = [
                i.path for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")
            ]
        out = [self / posixpath.relpath(path, self.path) for path in found]
        return sorted(out, key=lambda loc: loc.path)

    # -- writing ---------------------------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """Write the whole object; readers see all of it or nothing (local: temp file + rename)."""
        try:
            if self.is_local:
                folder = posixpath.dirname(self.path)
                os.makedirs(folder, exist_ok=True)
                tmp = posixpath.join(folder, f".{self.name}.{uuid.uuid4().hex[:8]}.tmp")
                try:
                    with open(tmp, "wb") as fh:  # fsync before the rename: durable once visible
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
            else:
                with self.fs.open_output_stream(self.path) as fh:
                    fh.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri}: {explain(exc)}") from exc

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def delete(self) -> None:
        """Remove the object (missing is fine)."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {self.uri}: {explain(exc)}") from exc

    def claim(self, data: bytes = b"") -> Location | None:
        """Own the slot named by this location's path prefix, or learn that someone else does.

        Writes a new object `<path>-<uuid>` and then lists `<path>-*`: when only this object is there, the
        slot is ours (returned); when any other claim is there, ours is deleted and None is returned. Two
        racers cannot both win: each writes before it lists, so whichever lists second sees the first's
        claim (object stores list what was written before, S3 and GCS since 2020). Both may lose, and
        then both retry with a fresh slot. A crashed winner leaves its claim, so the slot stays taken.
        """
        mine = self.parent / f"{self.name}-{uuid.uuid4().hex}"
        mine.write_bytes(data)
        rivals = [f for f in self.parent.files(recursive=False) if f.name.startswith(f"{self.name}-")]
        if [f.name for f in rivals] == [mine.name]:
            return mine
        mine.delete()
        return None


def explain(exc: BaseException) -> str:
    """A one-line reason from a pyarrow/AWS error, with the usual cause spelled out."""
    text = " ".join(str(exc).split())
    creds = "check storage.access_key_id / storage.secret_access_key (or the node's AWS credentials)"
    checks = (
        (("NoSuchBucket", "NO_SUCH_BUCKET", "bucket does not exist"), "the bucket does not exist"),
        (
            (
                "InvalidAccessKeyId",
                "INVALID_ACCESS_KEY_ID",
                "SignatureDoesNotMatch",
                "SIGNATURE_DOES_NOT_MATCH",
            ),
            f"the credentials were refused: {creds}",
        ),
        (
            ("AccessDenied", "ACCESS_DENIED", "HTTP response code: 403"),
            f"access denied: {creds} and the bucket policy",
        ),
        (
            ("curlCode: 7", "Couldn't connect", "Connection refused", "curlCode: 28", "Timeout", "timed out"),
            "the endpoint cannot be reached: check storage.endpoint and that the store is up",
        ),
    )
    for needles, reason in checks:
        if any(n in text for n in needles):
            return f"{reason} ({text[:240]})"
    return text[:300]


def is_uri(where: str | Path) -> bool:
    """Whether `where` is a URI (`s3://…`, `file://…`) rather than a bare local path."""
    return _SCHEME.match(str(where)) is not None


def open_location(where: str | Path | Location, settings: StorageSettings | None = None) -> Location:
    """A local path, `file://`, `s3://` or `gs://` URI as a `Location` (S3 options from `settings`)."""
    if isinstance(where, Location):
        return where
    text = str(where)
    m = _SCHEME.match(text)
    if m is None:
        path = Path(text).expanduser().resolve()
        return Location(pafs.LocalFileSystem(), path.as_posix(), path.as_posix())
    scheme, rest = m.group(1).lower(), m.group(2).rstrip("/")
    if scheme == "file":
        path = Path(rest if rest.startswith("/") else "/" + rest)
        return Location(pafs.LocalFileSystem(), path.as_posix(), f"file://{path.as_posix()}")
    if not rest:
        raise StorageError(f"{text!r} names no bucket: expected {scheme}://bucket[/prefix]")
    if scheme in ("s3", "s3a"):
        return Location(s3_filesystem(settings or StorageSettings()), rest, f"s3://{rest}")
    if scheme == "gs":
        try:
            fs, path = pafs.FileSystem.from_uri(f"gs://{rest}")
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot open gs://{rest}: {explain(exc)}") from exc
        return Location(fs, path, f"gs://{rest}")
    raise StorageError(
        f"unsupported storage scheme {scheme!r} in {text!r}: use a path, file://, s3:// or gs://"
    )


def s3_filesystem(settings: StorageSettings) -> pafs.S3FileSystem:
    """An S3 client from settings; unset credentials fall back to AWS's chain (env, profile, role)."""
    opts: dict[str, Any] = {
        "connect_timeout": settings.connect_timeout_s,
        "request_timeout": settings.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.retries),
    }
    if settings.region:
        opts["region"] = settings.region
    if settings.endpoint:
        m = _SCHEME.match(settings.endpoint)
        opts["endpoint_override"] = m.group(2) if m else settings.endpoint
        opts["scheme"] = m.group(1) if m else "https"
    for name, field in (
        ("access_key", "access_key_id"),
        ("secret_key", "secret_access_key"),
        ("session_token", "session_token"),
    ):
        secret = getattr(settings, field)
        if secret is not None:
            opts[name] = secret.get_secret_value()
    return pafs.S3FileSystem(**opts)


def check(loc: Location, setting: str) -> None:
    """Fail at start, in one line naming `setting`, when `loc` cannot be used: no bucket, refused
    credentials, an unreachable endpoint. A missing folder inside a reachable bucket is fine."""
    if loc.is_local:
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        info = loc.fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"{setting}={loc.uri}: {explain(exc)}") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(
            f"{setting}={loc.uri}: bucket {bucket!r} does not exist at the configured endpoint; "
            "create it or fix the setting"
        )
    try:  # listing proves the credentials may read, not only that the bucket exists
        loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=False, allow_not_found=True))
    except OSError as exc:
        raise StorageError(f"{setting}={loc.uri}: {explain(exc)}") from None
