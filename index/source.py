"""Where a gallery's image files live: a local folder, or object storage under any fsspec URL
(`s3://bucket/prefix`, `gs://...`). The build lists and reads the gallery through its source, the
index records the source's root, and search and the app check and read a hit's file through it.

Object storage reads through fsspec (s3fs for s3://, the `s3` extra), imported only for a URL.
Credentials and endpoint come from the usual environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL (for an S3-compatible server such as MinIO or moto).
An object's size and LastModified time stand in for a file's size and mtime in the incremental
rules, so a rewritten object is re-embedded like a rewritten file.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path, PurePosixPath

from metrix.datasets.base import IMAGE_EXTENSIONS

from .errors import GalleryIndexError
from .gallery import GalleryFile, find_images


def is_url(root: str | Path) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def open_source(root: str | Path) -> "Folder | ObjectStore":
    """The source for a gallery root as given on the command line or recorded in a manifest."""
    if is_url(root):
        return ObjectStore(str(root))
    return Folder(Path(str(root).removeprefix("file://")))


class Folder:
    """A gallery folder on a local (or mounted) file system."""

    def __init__(self, root: Path):
        self.path = Path(root).resolve()
        self.root = str(self.path)

    def check(self) -> None:
        if not self.path.is_dir():
            raise GalleryIndexError(f"{self.path}: not a folder")

    def list(self) -> tuple[list[GalleryFile], list[tuple[str, str]]]:
        return find_images(self.path)

    def read(self, path: str) -> bytes:
        return (self.path / path).read_bytes()

    def stat(self, path: str) -> tuple[int, int]:
        """(size, mtime_ns); raises OSError (FileNotFoundError when it is gone)."""
        stat = (self.path / path).stat()
        return stat.st_size, stat.st_mtime_ns

    def name(self, path: str) -> str:
        return str(self.path / path)


class ObjectStore:
    """A prefix in an object store, read through fsspec. Listing caches are off: a long-running
    server must see an object replaced after it started."""

    def __init__(self, url: str):
        self.root = url.rstrip("/")
        try:
            import fsspec

            self.fs, self.prefix = fsspec.core.url_to_fs(self.root, use_listings_cache=False)
        except ImportError as error:
            raise GalleryIndexError(
                f"{self.root}: reading object storage needs fsspec and its driver "
                f"({error.name or error}); install metrix[s3]"
            ) from None
        except ValueError as error:
            raise GalleryIndexError(f"{self.root}: {str(error).splitlines()[0]}") from None

    def check(self) -> None:
        try:
            if not self.fs.isdir(self.prefix):
                raise GalleryIndexError(f"{self.root}: no such bucket or prefix")
        except OSError as error:
            raise GalleryIndexError(f"{self.root}: cannot list ({_reason(error)})") from None

    def list(self) -> tuple[list[GalleryFile], list[tuple[str, str]]]:
        """(image objects sorted by path, []): hidden names (a part starting with ".") are
        skipped, as in a folder."""
        try:
            found = self.fs.find(self.prefix, detail=True)
        except OSError as error:
            raise GalleryIndexError(f"{self.root}: cannot list ({_reason(error)})") from None
        files = []
        for key, info in found.items():
            path = PurePosixPath(key).relative_to(self.prefix.rstrip("/")).as_posix()
            if info.get("type") == "directory" or any(part.startswith(".") for part in path.split("/")):
                continue
            if PurePosixPath(path).suffix.lower() in IMAGE_EXTENSIONS:
                files.append(GalleryFile(path, int(info["size"]), _mtime_ns(info)))
        return sorted(files, key=lambda f: f.path), []

    def read(self, path: str) -> bytes:
        try:
            return self.fs.cat_file(self._key(path))
        except FileNotFoundError:
            raise
        except OSError as error:
            raise OSError(error.errno, _reason(error)) from None

    def stat(self, path: str) -> tuple[int, int]:
        info = self.fs.info(self._key(path))
        return int(info["size"]), _mtime_ns(info)

    def name(self, path: str) -> str:
        return f"{self.root}/{path}"

    def _key(self, path: str) -> str:
        return f"{self.prefix.rstrip('/')}/{path}"


def _mtime_ns(info: dict) -> int:
    """An object's modification time in ns from whichever key its fsspec driver uses."""
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return int(value.timestamp() * 1e9)
        if isinstance(value, (int, float)):
            return int(value * 1e9)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except ValueError:
                continue
    return 0


def _reason(error: OSError) -> str:
    return (error.strerror or str(error) or type(error).__name__).splitlines()[0]


def default_name(root: str | Path) -> str:
    """The last part of a root: a folder's name, a bucket prefix's last part (for indexes/NAME)."""
    return PurePosixPath(str(root).rstrip("/")).name if is_url(root) else Path(root).resolve().name or os.sep
