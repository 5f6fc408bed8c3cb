"""Finished artifacts of `mdiff serve`, by id: a bounded map id → files under a temp folder.

Every route that produces an output (a completion, a video) saves it signed, then keeps it here
so that a client can fetch the file and its ``.c2pa`` sidecar by id later (the verify routes
serve the downloads). One store per app, made on first use:

    store = artifact_store(request.app)          # app.state.store
    path = store.new_path(".txt")                # a fresh path inside the store's folder
    completion.save(path)                        # writes path and path.c2pa
    aid = store.put("text", path, sidecar=sidecar_path(path), meta={"model": ...})
    art = store.get(aid)                         # Artifact(id, kind, path, sidecar, meta) or None

``put`` takes a path (the file moves into the store's folder if it is elsewhere) or bytes /
str (written to a new file). The store holds at most ``max_items`` artifacts: putting one
more deletes the oldest (its files too), so a long-running server's disk use stays bounded.
Thread-safe. Ids are random (``secrets.token_hex``), never derived from content.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from mdiff.errors import InvalidInputError

__all__ = ["Artifact", "Store", "artifact_store"]

MAX_ITEMS = 256


@dataclass(frozen=True)
class Artifact:
    """One stored output: ``kind`` ("text", "video", ...), its file, its sidecar (or None)."""

    id: str
    kind: str
    path: Path
    sidecar: Path | None
    meta: dict = field(default_factory=dict)
    created: float = 0.0


class Store:
    """A bounded id → `Artifact` map whose files live under ``root`` (default: a temp dir)."""

    def __init__(self, root: str | Path | None = None, max_items: int = MAX_ITEMS):
        if not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1:
            raise InvalidInputError(f"max_items must be a positive int, got {max_items!r}")
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mdiff-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_items = max_items
        self._items: OrderedDict[str, Artifact] = OrderedDict()
        self._lock = threading.Lock()

    def new_path(self, suffix: str = "") -> Path:
        """A fresh, unused path inside the store's folder (nothing is created)."""
        return self.root / f"{secrets.token_hex(8)}{suffix}"

    def put(self, kind: str, data_or_path, *, sidecar=None, suffix: str = "",
            meta: dict | None = None) -> str:  # fmt: skip
        """Keep an artifact and return its id; evicts the oldest beyond ``max_items``."""
        if not isinstance(kind, str) or not kind:
            raise InvalidInputError(f"kind must be a non-empty str, got {kind!r}")
        if isinstance(data_or_path, bytes | str) and not isinstance(data_or_path, Path):
            path = self.new_path(suffix)
            data = data_or_path.encode() if isinstance(data_or_path, str) else data_or_path
            path.write_bytes(data)
        else:
            path = self._adopt(Path(data_or_path))
        side = self._adopt(Path(sidecar)) if sidecar is not None else None
        aid = secrets.token_hex(12)
        art = Artifact(aid, kind, path, side, dict(meta or {}), time.time())
        with self._lock:
            self._items[aid] = art
            evicted = [self._items.popitem(last=False)[1] for _ in range(self._excess())]
        for old in evicted:
            for p in (old.path, old.sidecar):
                if p is not None and p.parent == self.root:
                    p.unlink(missing_ok=True)
        return aid

    def get(self, aid: str) -> Artifact | None:
        """The artifact with id ``aid``, or None (unknown or evicted)."""
        with self._lock:
            return self._items.get(aid) if isinstance(aid, str) else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _excess(self) -> int:
        return max(len(self._items) - self.max_items, 0)

    def _adopt(self, path: Path) -> Path:
        if not path.is_file():
            raise InvalidInputError(f"{path} is not a file: nothing to store")
        if path.parent.resolve() == self.root.resolve():
            return path
        target = self.new_path(path.suffix)
        shutil.move(str(path), target)
        return target


_MAKE = threading.Lock()


def artifact_store(app) -> Store:
    """The app's store (``app.state.store``), made on first use."""
    with _MAKE:
        store = getattr(app.state, "store", None)
        if store is None:
            store = app.state.store = Store()
        return store
