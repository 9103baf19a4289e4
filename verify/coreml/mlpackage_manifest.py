"""The manifest of a Core ML .mlpackage: which file in the package is the root model spec.

Read with the standard library only (coremltools takes seconds to import), so verify_contracts
checks a package's layout before it loads coremltools. The manifest is untrusted like the rest of
the package: a root path that leads outside the package is refused, never followed.

Containment is decided on real paths (os.path.realpath), so a symlink cannot lead out: every file
read from a package must resolve to its own place in the package's real directory, the one the
package's Manifest.json resolves into. A package directory that is itself a symlink, or a tree of
symlinks to one package's files at the same places (what Bazel's sandbox and runfiles make of a
tree artifact), resolves whole and is read; a symlink under Data/ to anything else (a file outside
the package, /dev/zero, another package's weights) is refused.
"""

import json
import os

from common.errors import InputError

MANIFEST = "Manifest.json"
# coremltools writes a manifest of a few hundred bytes; a larger one is not read into memory.
MAX_MANIFEST_BYTES = 1 << 20


def real_root(path: str) -> str:
    """The real directory of the package at `path`: where its Manifest.json resolves to."""
    return os.path.dirname(os.path.realpath(os.path.join(path, MANIFEST)))


def require_inside(path: str, member: str) -> None:
    """InputError unless `member`, a file named inside the package at `path`, resolves to the same
    place inside the package's real directory: a symlink that leads out of the package is refused."""
    relative = os.path.relpath(os.path.normpath(member), os.path.normpath(path))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep) or os.path.isabs(relative):
        raise InputError(f"{path}: {member} is not inside the package")
    root = real_root(path)
    if os.path.realpath(member) != os.path.join(root, relative):
        raise InputError(
            f"{path}: {relative} resolves to {os.path.realpath(member)}, outside the package "
            f"({root}); a package must hold its own files, not symlinks that lead elsewhere"
        )


def root_model_path(path: str) -> str:
    """The root model spec's path inside the .mlpackage directory `path`; InputError if the package
    is missing, has no readable manifest, or names a root model outside itself or not there."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: Core ML package not found (expected an .mlpackage directory)")
    manifest_path = os.path.join(path, MANIFEST)
    if not os.path.isfile(manifest_path):  # a device or a directory is not a manifest (/dev/zero)
        raise InputError(f"{path}: not a Core ML package (no Manifest.json file)")
    try:
        with open(manifest_path, "rb") as handle:
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(raw.decode("utf-8"))
        root = manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    except FileNotFoundError:
        raise InputError(f"{path}: not a Core ML package (no Manifest.json)") from None
    except (ValueError, RecursionError, KeyError, TypeError, OSError) as error:
        raise InputError(f"{manifest_path}: corrupt package manifest ({error!r})") from None
    data_dir = os.path.normpath(os.path.join(path, "Data"))
    model_path = os.path.normpath(os.path.join(data_dir, root)) if isinstance(root, str) else ""
    if not model_path.startswith(data_dir + os.sep):
        # The manifest is untrusted too: never read a file outside the package it describes.
        raise InputError(f"{manifest_path}: the root model path {root!r} points outside the package")
    if not os.path.isfile(model_path):
        raise InputError(f"{path}: the manifest names {model_path}, which is missing")
    require_inside(path, model_path)
    return model_path
