"""Crafted .pt2 files are refused before torch reads them, and nothing in them runs.

Each crafted torch.export program and AOTInductor package differs from what the exporter writes in
one way. The controls show the payloads are live: torch's own loaders, in a throw-away process,
run them (a pickle in the sample inputs, guard code, a shared object's initialiser each create a
marker file); through our loaders the marker never appears.
"""

import io
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from common import child_python
from common.errors import InputError
from conversion import aoti_decoder, export_program, pt2_archive, pt2_files, pt2_testing
from training.model import ModelConfig, Student, init_weights

torch.set_num_threads(1)

CFG = ModelConfig(
    vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=48
)
MODEL = "models/model.json"


@pytest.fixture(scope="module")
def program_records():
    model = Student(CFG)
    init_weights(model, 5)
    data = export_program.to_bytes(export_program.export(model.eval(), [16], CFG.max_seq_len, 16))
    return pt2_files.records(data)


def _write(path, records: dict[str, bytes]) -> str:
    with open(path, "wb") as handle:
        handle.write(pt2_files.rewrite(records))
    return str(path)


def _edit_graph(records, edit) -> dict[str, bytes]:
    doc = json.loads(records[MODEL])
    edit(doc)
    return {**records, MODEL: json.dumps(doc).encode()}


class _Marker:
    """Unpickling it creates the file `path` (open for writing creates it)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _child_load(code: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, path],
        env=child_python.child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_exporters_own_program_passes(program_records, tmp_path):
    pt2_archive.check_export_file(_write(tmp_path / "ok.pt2", program_records))


def test_a_pickle_in_the_sample_inputs_is_refused_and_never_runs(program_records, tmp_path):
    marker = tmp_path / "unpickled"
    payload = io.BytesIO()
    torch.save(_Marker(str(marker)), payload)
    path = _write(
        tmp_path / "pickled.pt2", {**program_records, "data/sample_inputs/model.pt": payload.getvalue()}
    )
    with pytest.raises(InputError, match="sample_inputs/model.pt is not empty"):
        export_program.load(path)
    assert not marker.exists()
    # Control: torch.export.load itself unpickles it (weights_only=True fails, then False).
    _child_load("import sys, torch\ntry:\n torch.export.load(sys.argv[1])\nexcept Exception:\n pass", path)
    assert marker.exists()


def test_guard_code_is_refused_and_never_runs(program_records, tmp_path):
    marker = tmp_path / "guarded"
    guard = f"open({str(marker)!r}, 'w') is not None"
    records = _edit_graph(program_records, lambda doc: doc.__setitem__("guards_code", [guard]))
    with pytest.raises(InputError, match="carries guard code"):
        export_program.load(_write(tmp_path / "guard.pt2", records))
    # With example inputs (tensors only, which torch.export.load reads with weights_only=True),
    # ExportedProgram.module() compiles the guard code with exec, and a call runs it.
    examples = io.BytesIO()
    torch.save(((torch.zeros(1, 4, dtype=torch.int32),), {}), examples)
    live = _write(tmp_path / "live.pt2", {**records, "data/sample_inputs/model.pt": examples.getvalue()})
    with pytest.raises(InputError, match="sample_inputs/model.pt is not empty"):
        export_program.load(live)
    assert not marker.exists()
    # Control: torch's loader, in a throw-away process, runs the guard.
    code = (
        "import sys, torch\n"
        "program = torch.export.load(sys.argv[1]).module()\n"
        "program(torch.zeros(1, 4, dtype=torch.int32))"
    )
    _child_load(code, live)
    assert marker.exists()


def _set_target(doc):
    doc["graph_module"]["graph"]["nodes"][-1]["target"] = "torch.ops.aten.from_file.default"


def _set_expr(doc):
    values = doc["graph_module"]["graph"]["sym_int_values"]
    name = next(iter(values))
    values[name] = {"as_expr": {"expr_str": "__import__('os').system('true')", "hint": None}}


def _set_spec(doc):
    doc["graph_module"]["module_call_graph"][0]["signature"]["out_spec"] = (
        '[1, {"type": "os.system", "context": null, "children_spec": []}]'
    )


def _set_metadata(doc):
    doc["graph_module"]["graph"]["nodes"][0]["metadata"] = {"stack_trace": "File /home/x/model.py"}


def _set_custom(doc):
    doc["graph_module"]["graph"]["custom_obj_values"] = {"obj": {"class_fqn": "__torch__.Evil"}}


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_target, "calls torch.ops.aten.from_file.default"),
        (_set_expr, "symbolic size"),
        (_set_spec, "names type 'os.system'"),
        (_set_metadata, "carries metadata"),
        (_set_custom, "custom objects"),
    ],
)
def test_a_graph_the_exporter_never_writes_is_refused(program_records, tmp_path, edit, message):
    path = _write(tmp_path / "graph.pt2", _edit_graph(program_records, edit))
    with pytest.raises(InputError, match=message):
        pt2_archive.check_export_file(path)


def test_pickled_short_or_unnamed_weights_are_refused(program_records, tmp_path):
    config_name = "data/weights/model_weights_config.json"
    config = json.loads(program_records[config_name])
    first = next(iter(config["config"]))

    def with_config(edit):
        doc = json.loads(program_records[config_name])
        edit(doc["config"][first])
        return {**program_records, config_name: json.dumps(doc).encode()}

    pickled = with_config(lambda entry: entry.__setitem__("use_pickle", True))
    with pytest.raises(InputError, match="pickled"):
        pt2_archive.check_export_file(_write(tmp_path / "p.pt2", pickled))
    # A shape that asks for more bytes than the record holds: refused before anything is allocated.
    huge = with_config(lambda entry: entry["tensor_meta"]["sizes"].__setitem__(0, {"as_int": 10**12}))
    with pytest.raises(InputError, match="its shape needs"):
        pt2_archive.check_export_file(_write(tmp_path / "h.pt2", huge))
    stray = {**program_records, "data/weights/weight_99": b"\0" * 4}
    with pytest.raises(InputError, match="weight_99 is named by no entry"):
        pt2_archive.check_export_file(_write(tmp_path / "s.pt2", stray))
    extra = {**program_records, "extra/run_me.py": b"print('hi')"}
    with pytest.raises(InputError, match="unexpected record extra/run_me.py"):
        pt2_archive.check_export_file(_write(tmp_path / "e.pt2", extra))


def _zip(path, entries: list[tuple[str, bytes]], compress=zipfile.ZIP_STORED) -> str:
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return str(path)


def test_zip_level_tricks_are_refused(program_records, tmp_path):
    entries = [("archive/" + name, data) for name, data in sorted(program_records.items())]
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = _zip(tmp_path / "twice.pt2", [*entries, entries[0]])
    with pytest.raises(InputError, match="appears twice"):
        pt2_archive.check_export_file(twice)
    with pytest.raises(InputError, match="compressed"):
        pt2_archive.check_export_file(_zip(tmp_path / "deflated.pt2", entries, zipfile.ZIP_DEFLATED))
    with pytest.raises(InputError, match="one top-level directory"):
        pt2_archive.check_export_file(_zip(tmp_path / "two.pt2", [*entries, ("other/x", b"")]))


# --- AOTInductor packages ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_so(tmp_path_factory) -> bytes:
    """A shared object whose initialiser creates $M8B_MARKER: what a crafted package could ship."""
    return pt2_testing.hostile_so(str(tmp_path_factory.mktemp("so")))


def _package_file(path, so, compress=zipfile.ZIP_STORED, **replace) -> str:
    return pt2_testing.write_zip(str(path), pt2_testing.package_records(so, **replace), compress)


def _own_pin(path) -> str:
    with open(path, "rb") as handle:
        return pt2_archive.so_sha256(handle.read())


def test_a_package_with_another_shared_object_is_refused_and_its_code_never_runs(
    hostile_so, tmp_path, monkeypatch
):
    marker = tmp_path / "dlopened"
    monkeypatch.setenv(pt2_testing.MARKER, str(marker))
    path = _package_file(tmp_path / "hostile.decode.pt2", hostile_so)
    pinned = "ab" * 32  # the contract's pin: the shipped .so, not this one
    with pytest.raises(InputError, match="but the contract pins"):
        aoti_decoder.load(path, pinned)
    assert not marker.exists()
    # The same layout with the matching pin passes the check: only the pin stood in the way.
    pt2_archive.check_aoti_file(path, _own_pin(path))
    # Control: torch's loader dlopens it, and the initialiser runs.
    _child_load(pt2_testing.LOAD_IN_CHILD, path)
    assert marker.exists()


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"data/aotinductor/model/../../../escape.so": b"x"}, "unexpected record"),
        ({"data/aotinductor/model/decoder.kernel.cpp": None}, "no data/aotinductor/model/decoder.kernel.cpp"),
        (
            {"data/aotinductor/model/decoder.wrapper_metadata.json": b'{"AOTI_DEVICE_KEY": "cuda"}'},
            "not for a CPU",
        ),
        ({"archive_format": b"pt3"}, "archive_format"),
    ],
)
def test_a_package_the_compile_never_writes_is_refused(hostile_so, tmp_path, replace, message):
    path = _package_file(tmp_path / "odd.decode.pt2", hostile_so, **replace)
    with pytest.raises(InputError, match=message):
        pt2_archive.check_aoti_file(path, _own_pin(path))


def test_a_compressed_package_is_refused(hostile_so, tmp_path):
    path = _package_file(tmp_path / "deflated.decode.pt2", hostile_so, zipfile.ZIP_DEFLATED)
    with pytest.raises(InputError, match="compressed"):
        pt2_archive.check_aoti_file(path, _own_pin(path))
