"""Bad copies of good files: missing, empty, truncated, bytes flipped, fields edited, not UTF-8.

Each helper writes one new file (or package directory) under a scratch directory and returns its
path; the good originals (the pipeline's artifacts) are never touched.
"""

import json
import os
import shutil
from collections.abc import Callable


class Spoiler:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def missing(self, name: str) -> str:
        return self.path(name)

    def write(self, name: str, data: bytes) -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def empty(self, name: str) -> str:
        return self.write(name, b"")

    def directory(self, name: str) -> str:
        path = self.path(name)
        os.makedirs(path, exist_ok=True)
        return path

    def truncated(self, source: str, name: str, fraction: float = 0.5) -> str:
        data = _read(source)
        return self.write(name, data[: int(len(data) * fraction)])

    def flipped(self, source: str, name: str, offsets: list[int]) -> str:
        """A copy with each byte at `offsets` inverted (negative offsets count from the end)."""
        data = bytearray(_read(source))
        for offset in offsets:
            data[offset] ^= 0xFF
        return self.write(name, bytes(data))

    def json_edit(self, source: str, name: str, edit: Callable[[dict], object]) -> str:
        """A copy of a JSON file after edit(doc); edit may change doc in place or return a new value."""
        doc = json.loads(_read(source))
        result = edit(doc)
        return self.write(name, json.dumps(doc if result is None else result, indent=2).encode())

    def lines_edit(self, source: str, name: str, line: int, edit: Callable[[bytes], bytes]) -> str:
        """A copy of a line-oriented file with line `line` (1-based) replaced by edit(old line)."""
        lines = _read(source).split(b"\n")
        lines[line - 1] = edit(lines[line - 1])
        return self.write(name, b"\n".join(lines))

    def record_edit(self, source: str, name: str, line: int, edit: Callable[[dict], object]) -> str:
        """A copy of a JSONL dataset whose line `line` is a JSON object changed by edit(obj)."""

        def change(raw: bytes) -> bytes:
            obj = json.loads(raw)
            result = edit(obj)
            return json.dumps(obj if result is None else result, ensure_ascii=False).encode()

        return self.lines_edit(source, name, line, change)

    def package_copy(self, source: str, name: str) -> str:
        """A writable copy of a package directory (e.g. a .mlpackage) to spoil file by file."""
        path = self.path(name)
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(source, path)
        for parent, dirs, files in os.walk(path):
            for entry in dirs + files:
                os.chmod(os.path.join(parent, entry), 0o755 if entry in dirs else 0o644)
        return path


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def small_dataset(source: str, target: str, train: int = 40, heldout: int = 20) -> str:
    """The header and the first `train` train and `heldout` held-out records of a dataset: the bad-input
    cases fail long before training, so a small file keeps each run fast."""
    kept, counts = [], {"train": 0, "heldout": 0}
    with open(source, "rb") as handle:
        kept.append(handle.readline())
        for raw in handle:
            split = json.loads(raw)["split"]
            if counts[split] < {"train": train, "heldout": heldout}[split]:
                counts[split] += 1
                kept.append(raw)
    with open(target, "wb") as handle:
        handle.write(b"".join(kept))
    return target
