"""The package index, read the way uv reads it: release lists (PEP 691 JSON) and a wheel's METADATA fetched with
HTTP range requests from the zip's end (a vLLM wheel is ~400 MB; its METADATA is a few KB and the index
publishes no separate metadata file for it).

Released files never change, so a wheel's METADATA is cached for good; release lists for a day. Cache:
$VLLMCOMPAT_CACHE or ~/.cache/pytest-vllmcompat, folder `index/`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import urllib.request
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from ..errors import IndexUnavailable

DEFAULT_INDEX = "https://pypi.org/simple"
LIST_TTL = 24 * 3600.0
_BLOCK = 256 * 1024


def index_url() -> str:
    return (os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")


def harness_cache() -> Path:
    """The harness's cache folder: $VLLMCOMPAT_CACHE or ~/.cache/pytest-vllmcompat (index, runtimes)."""
    return Path(os.environ.get("VLLMCOMPAT_CACHE") or Path.home() / ".cache" / "pytest-vllmcompat")


def cache_dir() -> Path:
    return harness_cache() / "index"


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 60.0, partial: bool = False) -> bytes:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if partial and response.status != 206:  # never download a whole 400 MB wheel by accident
                raise IndexUnavailable(f"{url}: the index ignores range requests (HTTP {response.status})")
            return response.read()
    except OSError as exc:
        raise IndexUnavailable(f"cannot read {url} from the package index ({exc}); the matrix of a target "
                                  "other than the seed targets is read from the index (cache: "
                                  f"{cache_dir()})") from None


def _project(name: str) -> dict[str, Any]:
    """The PEP 691 JSON page of a project, cached for LIST_TTL."""
    path = cache_dir() / f"{canonicalize_name(name)}.json"
    if path.is_file() and time.time() - path.stat().st_mtime < LIST_TTL:
        return json.loads(path.read_text())
    data = _get(f"{index_url()}/{canonicalize_name(name)}/", {"Accept": "application/vnd.pypi.simple.v1+json"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return json.loads(data)


def releases(name: str) -> list[Version]:
    """Final, non-yanked releases of `name` that have a wheel, oldest first."""
    page = _project(name)
    found = set()
    for f in page["files"]:
        if not f["filename"].endswith(".whl") or f.get("yanked"):
            continue
        try:
            version = Version(f["filename"].split("-")[1])
        except (IndexError, InvalidVersion):
            continue
        if not (version.is_prerelease or version.is_devrelease):
            found.add(version)
    return sorted(found)


def wheel_files(name: str, version: str) -> list[dict[str, Any]]:
    """The index's wheel files of `name==version` (PEP 691 entries: filename, url, hashes, size)."""
    found = []
    for f in _project(name)["files"]:
        try:
            if f["filename"].endswith(".whl") and parse_wheel_filename(f["filename"])[1] == Version(version):
                found.append(f)
        except (InvalidWheelFilename, InvalidVersion):
            continue
    return found


def sdist_file(name: str, version: str) -> dict[str, Any] | None:
    """The index's source distribution of `name==version` (a PEP 691 entry), or None."""
    for f in _project(name)["files"]:
        try:
            if f["filename"].endswith(".tar.gz") and parse_sdist_filename(f["filename"])[1] == Version(version):
                return f
        except (InvalidSdistFilename, InvalidVersion):
            continue
    return None


def download(url: str, path: Path, timeout: float = 120.0) -> None:
    """Fetch `url` into `path` (written beside it first, then renamed: a broken transfer leaves no file)."""
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise IndexUnavailable(f"cannot download {url} ({exc})") from None
    partial.replace(path)


def metadata(name: str, version: str) -> Message:
    """The METADATA of `name==version`'s wheel (x86-64 Linux or pure Python)."""
    path = cache_dir() / f"{canonicalize_name(name)}-{version}.METADATA"
    if not path.is_file():
        wheels = [f for f in _project(name)["files"] if f["filename"].endswith(".whl")
                  and f["filename"].split("-")[1] == version]
        wheels.sort(key=lambda f: ("x86_64" not in f["filename"] and "none-any" not in f["filename"]))
        if not wheels:
            raise IndexUnavailable(f"{name}=={version}: the index has no wheel of it")
        text = _remote_wheel_metadata(wheels[0]["url"], int(wheels[0].get("size") or 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return HeaderParser().parsestr(path.read_text())


def _remote_wheel_metadata(url: str, size: int) -> str:
    with zipfile.ZipFile(_RangeFile(url, size)) as wheel:
        [name] = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        return wheel.read(name).decode("utf-8")


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file: reads become HTTP range requests of whole blocks."""

    def __init__(self, url: str, size: int):
        self.url, self.size, self.pos = url, size, 0
        self.blocks: dict[int, bytes] = {}
        if not size:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as response:
                    self.size = int(response.headers["Content-Length"])
            except OSError as exc:
                raise IndexUnavailable(f"cannot read the size of {url} ({exc})") from None

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def _block(self, index: int) -> bytes:
        if index not in self.blocks:
            start = index * _BLOCK
            end = min(self.size, start + _BLOCK) - 1
            self.blocks[index] = _get(self.url, {"Range": f"bytes={start}-{end}"}, partial=True)
        return self.blocks[index]

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        out = bytearray()
        while self.pos < end:
            block = self._block(self.pos // _BLOCK)
            offset = self.pos % _BLOCK
            chunk = block[offset:offset + end - self.pos]
            out += chunk
            self.pos += len(chunk)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)
