"""sha256 digests of artifacts: files, and directories such as a Core ML .mlpackage."""

import hashlib
import os


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe(path: str) -> dict:
    """{"sha256", "size"} of a file; a directory also gets "files" and a tree digest.

    The tree digest covers each file's relative path and content digest, in sorted order, so it
    is the same wherever the directory lives.
    """
    if os.path.isfile(path):
        return {"sha256": sha256_file(path), "size": os.path.getsize(path)}
    files = sorted(
        os.path.relpath(os.path.join(directory, name), path)
        for directory, _, names in os.walk(path)
        for name in names
    )
    digest = hashlib.sha256()
    size = 0
    for rel in files:
        full = os.path.join(path, rel)
        digest.update(rel.replace(os.sep, "/").encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(full)))
        size += os.path.getsize(full)
    return {"sha256": digest.hexdigest(), "size": size, "files": len(files)}
