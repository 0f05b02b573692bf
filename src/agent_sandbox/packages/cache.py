"""The host's wheel cache: wheels stored by their SHA-256, the resolutions that name them, and
the per-run folders that show a sandbox exactly the wheels it needs.

Layout under the cache root: ``wheels/<sha256>/<file>.whl``, ``resolutions/<key>.json`` and
``runs/<token>/`` (hard links, removed after the run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import NormalizedName, parse_wheel_filename

_READABLE_FILE = 0o644
_READABLE_DIR = 0o755  # the sandbox user (uid 1000) reads the mounted folder


@dataclass(frozen=True)
class CachedWheel:
    """One wheel in the cache."""

    filename: str
    sha256: str
    size: int
    path: Path

    @property
    def name(self) -> NormalizedName:
        """The project's normalized name, e.g. ``scikit-learn``."""
        return parse_wheel_filename(self.filename)[0]


class WheelCache:
    """Wheels by hash, and the requirement lists already resolved to them."""

    def __init__(self, root: Path):
        self.root = root
        self.wheels = root / "wheels"
        self.resolutions = root / "resolutions"
        self.runs = root / "runs"

    def add(self, path: Path) -> CachedWheel:
        """Move a downloaded wheel into the cache (a no-op if the same bytes are there)."""
        digest = _sha256(path)
        folder = self.wheels / digest
        folder.mkdir(mode=_READABLE_DIR, parents=True, exist_ok=True)
        target = folder / path.name
        os.chmod(path, _READABLE_FILE)
        os.replace(path, target)
        return CachedWheel(path.name, digest, target.stat().st_size, target)

    def remember(self, key: str, requirements: Sequence[str], wheels: Sequence[CachedWheel]) -> None:
        """Record that ``requirements`` resolved to ``wheels``."""
        record = {
            "resolved_at": time.time(),
            "requirements": list(requirements),
            "wheels": [{"filename": w.filename, "sha256": w.sha256, "size": w.size} for w in wheels],
        }
        self.resolutions.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.resolutions, suffix=".tmp", delete=False) as out:
            json.dump(record, out)
        os.replace(out.name, self.resolutions / f"{key}.json")

    def recall(self, key: str, max_age_s: float) -> list[CachedWheel] | None:
        """The wheels ``key`` resolved to, if that is recent enough and every wheel is still here."""
        try:
            record = json.loads((self.resolutions / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        if time.time() - float(record.get("resolved_at", 0)) > max_age_s:
            return None
        wheels = []
        for entry in record.get("wheels", []):
            path = self.wheels / entry["sha256"] / entry["filename"]
            with contextlib.suppress(OSError):
                if path.stat().st_size == entry["size"]:
                    os.utime(path)  # recently used: trimmed last
                    wheels.append(CachedWheel(entry["filename"], entry["sha256"], entry["size"], path))
                    continue
            return None  # a wheel was trimmed or removed by hand: resolve again
        return wheels

    def trim(self, max_bytes: int, keep: Sequence[CachedWheel] = ()) -> int:
        """Remove the least recently used wheels (never those in ``keep``) until the cache holds
        at most ``max_bytes``; returns how many went."""
        kept = {wheel.path for wheel in keep}
        stored = []
        for path in self.wheels.glob("*/*.whl"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                stored.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in stored)
        removed = 0
        for _, size, path in sorted(stored):
            if total <= max_bytes:
                break
            if path in kept:
                continue
            shutil.rmtree(path.parent, ignore_errors=True)
            total -= size
            removed += 1
        return removed

    @contextlib.contextmanager
    def download_folder(self) -> Iterator[Path]:
        """An empty folder on the cache's file system for one download, removed afterwards."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="download-", dir=self.root))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def staged(self, wheels: Sequence[CachedWheel]) -> Iterator[Path]:
        """A folder holding exactly ``wheels`` (hard links, or copies where links fail) for one
        run to mount read-only; removed when the block ends."""
        folder = self.runs / secrets.token_hex(8)
        folder.mkdir(mode=_READABLE_DIR, parents=True)
        os.chmod(folder, _READABLE_DIR)  # whatever the umask
        try:
            for wheel in wheels:
                link_or_copy(wheel.path, folder / wheel.filename)
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def remove_stale(self, older_than_s: float) -> int:
        """Remove run and download folders a crashed process left behind; returns how many."""
        removed = 0
        now = time.time()
        for folder in [*self.runs.glob("*"), *self.root.glob("download-*")]:
            with contextlib.suppress(OSError):
                if now - folder.stat().st_mtime > older_than_s:
                    shutil.rmtree(folder)
                    removed += 1
        return removed


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (free, same file system), or copy it, readable by all."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        os.chmod(target, _READABLE_FILE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
