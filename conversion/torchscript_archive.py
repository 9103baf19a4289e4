"""What a TorchScript archive from //conversion:export_pytorch (the model or its KV-cache decoder) may
hold, checked before torch loads it.

torch.jit.load compiles the archive's code and runs some of it while loading (a class's
__setstate__), and TorchScript can call operators such as torch.save and torch.from_file: an archive
from elsewhere could write files just by being loaded (SECURITY.md). check_file() holds a file to
what export() writes. It reads the zip with the standard library only, so binaries run it before
importing torch, and a bad archive fails in well under a second.
"""

import ast
import os
import pickletools
import re
import zipfile

from common.errors import InputError

# An allowlist, not a denylist: the records torchscript.to_bytes() writes, the pickle globals
# torch.jit.save uses for our modules, and the operators the traced student calls. A change to
# training/model.py that needs a new operator fails export_pytorch (it checks its own archive) until
# the operator is added here; add only pure tensor operators, never one that touches files,
# processes or the network.
_RECORD = re.compile(
    r"^[\w.-]+/(data\.pkl|constants\.pkl|version|byteorder|\.data/serialization_id"
    r"|data/\d+|constants/\d+|code/__torch__(/[\w/]+)?\.py)$"
)
_PICKLE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")}
_STORAGES = {"FloatStorage", "DoubleStorage", "HalfStorage", "LongStorage", "IntStorage", "BoolStorage"}
ALLOWED_OPS = frozenset(
    {"ops.prim.NumToTensor"}
    | {
        f"torch.{name}"
        for name in (
            "add embedding flatten linear mean mul pow repeat_interleave roll rsqrt "
            "scaled_dot_product_attention silu size slice to transpose unflatten"
        ).split()
    }
    # The decoder's fixed-size KV cache (conversion/kv_decoder.py): positions and mask from the pos
    # tensor, index_copy_ writes into the cache tensors it was handed.
    | {
        f"torch.{name}"
        for name in "arange device index_copy_ index_select le repeat select unsqueeze where".split()
    }
)
_ALLOWED_BUILTINS = frozenset({"getattr", "int", "float", "bool", "len", "annotate", "unchecked_cast"})


def _refuse(where: str, problem: str) -> InputError:
    return InputError(
        f"{where}: {problem}; not a TorchScript archive written by //conversion:export_pytorch, so it is "
        "not loaded (loading runs the archive's code; see SECURITY.md)"
    )


def _check_pickle(where: str, name: str, data: bytes) -> None:
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("STACK_GLOBAL", "INST", "OBJ"):
                raise _refuse(where, f"{name} uses pickle opcode {op.name}")
            if op.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                ok = module.startswith("__torch__.") or (module, attr) in _PICKLE_GLOBALS
                if not ok and not (module == "torch" and attr in _STORAGES):
                    raise _refuse(where, f"{name} refers to {module}.{attr}")
    except InputError:
        raise
    except Exception as error:  # pickletools raises several types on malformed data
        raise _refuse(where, f"{name} is not a valid pickle ({type(error).__name__})") from None


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _check_code(where: str, name: str, data: bytes) -> None:
    try:
        tree = ast.parse(data.decode("utf-8"))
    except (UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refuse(where, f"{name} is not TorchScript source") from None
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name != "forward":
            # __setstate__ runs during torch.jit.load; export() writes forward() only.
            raise _refuse(where, f"{name} defines {node.name}()")
        if isinstance(node, ast.Name) and node.id in ("torch", "ops"):
            top = node
            while isinstance(parents.get(top), ast.Attribute):
                top = parents[top]
            if _dotted(top) not in ALLOWED_OPS:
                raise _refuse(
                    where, f"{name} calls {_dotted(top) or node.id}, which the exporter never writes"
                )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in _ALLOWED_BUILTINS:
                raise _refuse(where, f"{name} calls {node.func.id}()")


def check_archive(source) -> None:
    """InputError unless `source` (a path or file object) holds only what export() writes."""
    where = source if isinstance(source, str) else "TorchScript archive"
    try:
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
            records = {name: archive.read(name) for name in names}
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as error:
        raise InputError(f"{where}: not a TorchScript archive (a zip file): {error}") from None
    if len(records) != len(names):
        # zipfile reads the last of two same-named records, torch's reader may take the first.
        raise _refuse(where, "a record name appears twice")
    prefixes = {name.split("/", 1)[0] for name in records}
    if len(prefixes) != 1:
        raise _refuse(where, f"records under {len(prefixes)} top-level directories")
    for name, data in sorted(records.items()):
        if not _RECORD.match(name):
            raise _refuse(where, f"unexpected record {name}")
        if name.endswith(".pkl"):
            _check_pickle(where, name, data)
        elif name.endswith(".py"):
            _check_code(where, name, data)


def check_file(path: str) -> None:
    """InputError unless `path` is a readable, undamaged archive that holds only what export() writes."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: TorchScript file not found")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(
            f"{path}: not a TorchScript archive (a zip file): {error}; re-run the export"
        ) from None
    if damaged is not None:
        raise InputError(f"{path}: damaged record {damaged} (CRC mismatch); re-run the export")
    check_archive(path)
