"""What a .pt2 from //conversion:export_pytorch may hold, checked before torch reads it.

A .pt2 is a zip, and both kinds we write can run code when loaded (SECURITY.md):
  - magic-8-ball.pt2 (torch.export.save): torch.export.load unpickles a sample-inputs record
    (falling back to weights_only=False) and weights marked use_pickle, evaluates the symbolic
    expressions of its JSON graph with sympy (eval), resolves every node target by name on torch,
    and ExportedProgram.module() compiles the archive's guard code with exec;
  - magic-8-ball.decode.pt2 (AOTInductor): the loader extracts the archive's files by their names
    and dlopens its shared object, whose initialisers run at once.
So, with the standard library only (binaries run it before importing torch), check_export_file()
holds a program to what conversion/export_program.py writes: exactly its records, uncompressed, no
name twice, an empty sample-inputs record, every weight raw bytes of a size its declared shape and
dtype give, a graph whose node targets are the operators the student uses, no node metadata, no
guard code, no custom objects, and every string either a plain name or, where torch parses it, of
the form the exporter writes. check_aoti_file() holds a package to exactly the records
conversion/aoti_compile.py writes, under their fixed names, and its shared object to the sha256
the contract pins: a package compiled anywhere else is refused before anything is extracted.
"""

import hashlib
import json
import os
import re
import zipfile

from common.errors import InputError

# Largest record read: the biggest student (100M parameters, training/config.py) as f32, with room.
MAX_RECORD = 512 * 1024 * 1024
MAX_JSON = 64 * 1024 * 1024
_COMMON = {
    "archive_format": b"pt2",
    "archive_version": b"0",
    "byteorder": b"little",
}
_COMMON_OTHER = (".data/version", ".data/serialization_id")
_PLAIN = re.compile(r"^[A-Za-z0-9_.]*$")

# --- torch.export program (magic-8-ball.pt2) ----------------------------------------------------
_MODEL, _SAMPLE = "models/model.json", "data/sample_inputs/model.pt"
_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
_CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
_PAYLOAD = {
    _WEIGHTS_CONFIG: re.compile(r"^data/weights/(weight_\d+)$"),
    _CONSTANTS_CONFIG: re.compile(r"^data/constants/(tensor_\d+)$"),
}
# The operators the student's exported forward calls (training/model.py). A change to the model
# that needs another fails export_pytorch (it checks its own archive) until it is added here; add
# only pure tensor operators, never one that reads or writes files.
ALLOWED_TARGETS = frozenset(
    f"torch.ops.aten.{name}"
    for name in (
        "_assert_tensor_metadata.default add.Tensor embedding.default flatten.using_ints linear.default "
        "mean.dim mul.Tensor pow.Tensor_Scalar repeat_interleave.self_int roll.default rsqrt.default "
        "scaled_dot_product_attention.default silu.default slice.Tensor sym_size.int to.dtype "
        "transpose.int unflatten.int"
    ).split()
)
_TOP_KEYS = {
    "graph_module",
    "opset_version",
    "range_constraints",
    "schema_version",
    "verifiers",
    "torch_version",
    "guards_code",
}
# Symbolic sizes as torch writes them (sympy's srepr, which torch.export.load evaluates): only these
# constructors, symbols s<N>, flags and integers.
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?:Add|Mul|Integer|Symbol|Max|Min|FloorDiv|Mod|Pow|CeilToInt|FloorToInt)\("
    r"|'s\d+'|(?:positive|integer|nonnegative)=(?:True|False)|-?\d+|[(),])"
)
_SPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}
# dtype (torch/_export/serde/schema.py, ScalarType) -> bytes per element, for the tensors we write.
_ITEMSIZE = {5: 8, 7: 4}  # LONG, FLOAT
_LAYOUT_STRIDED = 7

# --- AOTInductor package (magic-8-ball.decode.pt2) ----------------------------------------------
_AOTI_DIR = "data/aotinductor/model/"
AOTI_SO = _AOTI_DIR + "decoder.wrapper.so"
_AOTI_TEXT = tuple(
    _AOTI_DIR + name
    for name in (
        "decoder.wrapper.cpp",
        "decoder.kernel.cpp",
        "decoder.wrapper_metadata.json",
        "decoder.kernel_metadata.json",
    )
)
_AOTI_METADATA = {"AOTI_DEVICE_KEY": "cpu", "AOTI_PLATFORM": "linux"}


def _refuse(where: str, problem: str, writer: str) -> InputError:
    return InputError(
        f"{where}: {problem}; not a {writer} written by //conversion:export_pytorch, so it is not "
        "loaded (loading it could run code; see SECURITY.md)"
    )


def _read_records(path: str, what: str) -> dict[str, bytes]:
    """The archive's records by name without its one top-level directory; sizes checked before
    anything is read. InputError for a missing, damaged or oddly built zip."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                # zipfile reads the last of two same-named records, torch's reader may take the first.
                raise _refuse(path, "a record name appears twice", what)
            prefixes = {name.split("/", 1)[0] for name in names}
            if len(prefixes) != 1 or any("/" not in name for name in names):
                raise _refuse(path, "records are not all under one top-level directory", what)
            for info in infos:
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    raise _refuse(path, f"{info.filename} is compressed or encrypted", what)
                if info.file_size > MAX_RECORD:
                    raise _refuse(path, f"{info.filename} declares {info.file_size} bytes", what)
            damaged = archive.testzip()
            if damaged is not None:
                raise InputError(f"{path}: damaged record {damaged} (CRC mismatch); re-run the export")
            return {info.filename.split("/", 1)[1]: archive.read(info) for info in infos}
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError, EOFError) as error:
        raise InputError(f"{path}: not a {what} (a zip file): {error}; re-run the export") from None


def _check_common(path: str, records: dict[str, bytes], what: str) -> None:
    for name, expected in _COMMON.items():
        if records.get(name) != expected:
            raise _refuse(path, f"{name} is not {expected.decode()!r}", what)


def _json(path: str, name: str, data: bytes, what: str):
    if len(data) > MAX_JSON:
        raise _refuse(path, f"{name} is {len(data)} bytes", what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refuse(path, f"{name} is not JSON", what) from None


# --- the program ------------------------------------------------------------------------------


def _check_payload(path: str, records: dict[str, bytes], config_name: str, what: str) -> None:
    """A weights or constants config: every entry raw bytes (no pickle) of the size its meta says,
    and every payload record named by an entry."""
    pattern = _PAYLOAD[config_name]
    doc = _json(path, config_name, records[config_name], what)
    if not isinstance(doc, dict) or set(doc) != {"config"} or not isinstance(doc["config"], dict):
        raise _refuse(path, f"{config_name} is not a payload config", what)
    named = set()
    for fqn, entry in doc["config"].items():
        at = f"{config_name}: {fqn}"
        if not isinstance(fqn, str) or not _PLAIN.match(fqn) or not isinstance(entry, dict):
            raise _refuse(path, f"{config_name} has an odd entry", what)
        if (
            set(entry) != {"path_name", "is_param", "use_pickle", "tensor_meta"}
            or entry["use_pickle"] is not False
        ):
            raise _refuse(path, f"{at} is pickled or has other fields", what)
        member = f"{os.path.dirname(config_name)}/{entry['path_name']}"
        if not isinstance(entry["path_name"], str) or not pattern.match(member) or member not in records:
            raise _refuse(path, f"{at} names a record that is not there", what)
        named.add(member)  # tied weights (tie_embeddings) name one record twice
        meta = entry["tensor_meta"]
        try:
            sizes = [dim["as_int"] for dim in meta["sizes"]]
            itemsize = _ITEMSIZE[meta["dtype"]]
            ok = (
                meta["layout"] == _LAYOUT_STRIDED
                and meta["device"] == {"type": "cpu", "index": None}
                and meta["storage_offset"] == {"as_int": 0}
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise _refuse(path, f"{at} has a tensor meta this exporter never writes", what)
        count = itemsize
        for n in sizes:
            count *= n
        if count != len(records[member]):
            raise _refuse(
                path, f"{at}: {member} holds {len(records[member])} bytes, its shape needs {count}", what
            )
    unnamed = sorted(name for name in records if pattern.match(name) and name not in named)
    if unnamed:
        raise _refuse(path, f"{unnamed[0]} is named by no entry of {config_name}", what)


def _check_expr(path: str, text: str, what: str) -> None:
    position = 0
    while position < len(text):
        match = _EXPR_TOKEN.match(text, position)
        if not match or match.end() == position:
            raise _refuse(path, f"the symbolic size {text[:80]!r} is not one the exporter writes", what)
        position = match.end()


def _check_spec(path: str, text: str, what: str) -> None:
    """A pytree spec string: JSON of containers and leaves, no other types."""
    spec = _json(path, "a tree spec", text.encode("utf-8"), what)

    def walk(node) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            if node.get("type") not in _SPEC_TYPES:
                raise _refuse(path, f"a tree spec names type {str(node.get('type'))[:80]!r}", what)
            context = node.get("context")
            if context is not None:
                keys = _json(path, "a tree spec context", str(context).encode("utf-8"), what)
                if keys is not None and not (
                    isinstance(keys, list) and all(isinstance(k, str) and _PLAIN.match(k) for k in keys)
                ):
                    raise _refuse(path, "a tree spec context holds more than names", what)
            for child in node.get("children_spec", []):
                walk(child)
        elif node is not None and not isinstance(node, int):
            raise _refuse(path, "a tree spec holds an odd value", what)

    walk(spec)


def _check_graph(path: str, doc, what: str) -> None:
    if not isinstance(doc, dict) or set(doc) != _TOP_KEYS:
        raise _refuse(path, f"{_MODEL} has fields {sorted(doc) if isinstance(doc, dict) else '?'}", what)
    if doc["guards_code"] != []:
        raise _refuse(path, f"{_MODEL} carries guard code (ExportedProgram.module() would exec it)", what)
    module = doc["graph_module"]
    graph = module.get("graph") if isinstance(module, dict) else None
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise _refuse(path, f"{_MODEL} has no graph", what)
    if graph.get("custom_obj_values"):
        raise _refuse(path, f"{_MODEL} holds custom objects", what)
    for node in graph["nodes"]:
        if not isinstance(node, dict) or node.get("target") not in ALLOWED_TARGETS:
            target = node.get("target") if isinstance(node, dict) else node
            raise _refuse(path, f"{_MODEL} calls {str(target)[:80]}, which the exporter never writes", what)
        if node.get("metadata") != {}:
            raise _refuse(path, f"{_MODEL}: node {str(node.get('name'))[:40]} carries metadata", what)
    for key in doc["range_constraints"] if isinstance(doc["range_constraints"], dict) else [None]:
        if not isinstance(key, str) or not re.match(r"^s\d+$", key):
            raise _refuse(path, f"{_MODEL} has an odd range constraint", what)

    def walk(value, key: str | None) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                if not isinstance(child_key, str) or not _PLAIN.match(child_key):
                    raise _refuse(path, f"{_MODEL} has a key {str(child_key)[:80]!r}", what)
                walk(child, child_key)
        elif isinstance(value, list):
            for child in value:
                walk(child, key)
        elif isinstance(value, str):
            if key == "expr_str":
                _check_expr(path, value, what)
            elif key in ("in_spec", "out_spec"):
                _check_spec(path, value, what)
            elif key == "torch_version":
                if not re.match(r"^[0-9A-Za-z.+]{1,40}$", value):
                    raise _refuse(path, f"{_MODEL} has an odd torch_version", what)
            elif not _PLAIN.match(value):
                raise _refuse(path, f"{_MODEL} has a string {value[:80]!r} where names go", what)

    walk(doc, None)


def check_export_file(path: str) -> None:
    """InputError unless `path` holds only what conversion/export_program.py writes."""
    what = "torch.export program"
    records = _read_records(path, what)
    _check_common(path, records, what)
    expected = {*_COMMON, *_COMMON_OTHER, _MODEL, _SAMPLE, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG}
    for name in records:
        if name not in expected and not any(p.match(name) for p in _PAYLOAD.values()):
            raise _refuse(path, f"unexpected record {name}", what)
    missing = sorted(expected - set(records))
    if missing:
        raise _refuse(path, f"no {missing[0]} record", what)
    if records[_SAMPLE]:
        raise _refuse(path, f"{_SAMPLE} is not empty (torch.export.load would unpickle it)", what)
    for config in _PAYLOAD:
        _check_payload(path, records, config, what)
    _check_graph(path, _json(path, _MODEL, records[_MODEL], what), what)


# --- the AOTInductor package ------------------------------------------------------------------


def expected_aoti_records() -> set[str]:
    """Every record name of a package (without the archive's prefix)."""
    return {*_COMMON, *_COMMON_OTHER, AOTI_SO, *_AOTI_TEXT}


def check_aoti_file(path: str, so_sha256: str) -> None:
    """InputError unless `path` holds exactly what conversion/aoti_compile.py writes and its shared
    object's sha256 is `so_sha256` (the contract's pin)."""
    what = "AOTInductor package"
    records = _read_records(path, what)
    _check_common(path, records, what)
    expected = expected_aoti_records()
    unexpected = sorted(set(records) - expected)
    if unexpected:
        raise _refuse(path, f"unexpected record {unexpected[0]}", what)
    missing = sorted(expected - set(records))
    if missing:
        raise _refuse(path, f"no {missing[0]} record", what)
    for name in _AOTI_TEXT:
        if name.endswith("_metadata.json"):
            metadata = _json(path, name, records[name], what)
            if not isinstance(metadata, dict) or any(metadata.get(k) != v for k, v in _AOTI_METADATA.items()):
                raise _refuse(path, f"{name} is not for a CPU on Linux", what)
    actual = hashlib.sha256(records[AOTI_SO]).hexdigest()
    if actual != so_sha256:
        raise InputError(
            f"{path}: its shared object has sha256 {actual}, but the contract pins {so_sha256}; "
            "it is not loaded (loading runs its code): use the package from the same export"
        )


def so_sha256(package: bytes) -> str:
    """The sha256 of the shared object inside a package's bytes, for the contract's pin."""
    import io

    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        names = [n for n in archive.namelist() if n.split("/", 1)[-1] == AOTI_SO]
        if len(names) != 1:
            raise InputError(f"AOTInductor package: {len(names)} {AOTI_SO} records, expected 1")
        return hashlib.sha256(archive.read(names[0])).hexdigest()
