"""The manifest of a Core ML .mlpackage: which file in the package is the root model spec.

Read with the standard library only (coremltools takes seconds to import), so verify_contracts
checks a package's layout before it loads coremltools. The manifest is untrusted like the rest of
the package: a root path that leads outside the package is refused, never followed.
"""

import json
import os

from common.errors import InputError


def root_model_path(path: str) -> str:
    """The root model spec's path inside the .mlpackage directory `path`; InputError if the package
    is missing, has no readable manifest, or names a root model outside itself or not there."""
    if not os.path.isdir(path):
        raise InputError(f"{path}: Core ML package not found (expected an .mlpackage directory)")
    manifest_path = os.path.join(path, "Manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
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
    return model_path
