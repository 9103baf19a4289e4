"""Untrusted files never execute code: crafted payloads go to every loader and every binary.

Each payload would create a marker file if anything ran it. The pickle payload's bytes are written
here by hand (nothing is unpickled in this process); a control test proves the payload is live by
unpickling it in a throw-away subprocess. Every project loader then gets every payload in the place
of each file it reads; each must refuse it with InputError (binaries: exit 2, a clear line), and
the marker must never appear. A loader inventory scans the project's sources, so a new
`torch.load` without weights_only=True, a pickle.load or an `allow_pickle=True` fails here too.
Hostile Core ML packages (a state declared 2^30 positions long, a symlink under Data/ that leads out
of the package) are refused before anything is allocated or read, in process and by every binary
that takes a package.
"""

import ast
import io
import os
import resource
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from common import child_python
from common.errors import InputError
from conversion import torchscript, torchscript_archive
from tests import harness, spoil
from training import checkpoint
from verify.coreml import mil_executor, npz_arrays
from verify.gguf_files import gguf_check

A = harness.artifact
# Scripting the payload modules is the point here, deprecated or not.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def pickle_payload(marker: str) -> bytes:
    """Protocol-2 pickle of os.system("touch <marker>"), assembled opcode by opcode."""
    command = f"touch {marker}".encode()
    return b"\x80\x02cos\nsystem\nX" + len(command).to_bytes(4, "little") + command + b"\x85R."


def torch_save_payload(marker: str) -> bytes:
    """A torch.save-style zip whose data.pkl is the payload: torch.load(weights_only=False) runs it."""
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name, data in (("data.pkl", pickle_payload(marker)), ("byteorder", b"little"), ("version", b"3\n")):
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def _script(module: torch.nn.Module) -> bytes:
    return torchscript.to_bytes(torch.jit.script(module))


class WritesOnLoad(torch.nn.Module):
    """Its __setstate__, which torch.jit.load itself runs, writes a file."""

    def __init__(self, marker: str):
        super().__init__()
        self.weight = torch.zeros(2)
        self.marker = marker

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return ids.float()

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[2]
        torch.save(self.weight, self.marker)


class WritesOnRun(torch.nn.Module):
    """A 'model' whose forward writes a file (ask runs forward on a question)."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        torch.save(ids, self.marker)
        return torch.zeros(1, ids.size(1), 512)


def torchscript_setstate_payload(marker: str) -> bytes:
    return _script(WritesOnLoad(marker))


def torchscript_forward_payload(marker: str) -> bytes:
    return _script(WritesOnRun(marker))


def torchscript_pickle_payload(marker: str) -> bytes:
    """The pipeline's own TorchScript archive with data.pkl swapped for the pickle payload."""
    with open(A("torchscript"), "rb") as handle:
        reader = torch._C.PyTorchFileReader(io.BytesIO(handle.read()))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        data = pickle_payload(marker) if name == "data.pkl" else reader.get_record(name)
        writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


PAYLOADS = {
    "pickle": pickle_payload,
    "torch_save_zip": torch_save_payload,
    "torchscript_setstate": torchscript_setstate_payload,
    "torchscript_forward": torchscript_forward_payload,
    "torchscript_data_pkl": torchscript_pickle_payload,
}


@pytest.fixture
def marker(tmp_path):
    path = str(tmp_path / "MARKER")
    yield path
    assert not os.path.exists(path), "a payload ran: the marker file exists"


@pytest.fixture(scope="module")
def spoiler(tmp_path_factory):
    return spoil.Spoiler(str(tmp_path_factory.mktemp("payloads")))


def test_the_pickle_payload_is_live(tmp_path):
    """Control: plain pickle.loads in a throw-away process runs it (so the checks below mean something)."""
    control = str(tmp_path / "CONTROL")
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=pickle_payload(control), check=True, timeout=60)
    assert os.path.exists(control)


def test_the_torchscript_payload_is_live(tmp_path):
    """Control: an unguarded torch.jit.load, in a throw-away process, writes the marker while loading."""
    control = str(tmp_path / "CONTROL")
    archive = tmp_path / "setstate.pt"
    archive.write_bytes(torchscript_setstate_payload(control))
    code = "import sys, torch; torch.jit.load(sys.argv[1])"
    subprocess.run(
        [sys.executable, "-c", code, str(archive)],
        check=True,
        timeout=120,
        capture_output=True,
        env=child_python.child_env(),
    )
    assert os.path.exists(control)


# ---- every loader, in process ------------------------------------------------------------------


def _pinned_metadata(spoiler, weights_path: str) -> str:
    # weights_sha256 pinned to the payload: the digest check cannot stop it, the safetensors parser must.
    digest = checkpoint.sha256_file(weights_path)
    return spoiler.json_edit(
        A("metadata"), f"pinned_{digest[:12]}.json", lambda doc: doc.update(weights_sha256=digest)
    )


def _load_checkpoint_weights(path, spoiler):
    checkpoint.load(path, _pinned_metadata(spoiler, path))


def _load_checkpoint_metadata(path, spoiler):
    checkpoint.load(A("weights"), path)


def _load_torchscript(path, spoiler):
    torchscript.load(path)


def _load_gguf(path, spoiler):
    gguf_check.load_llama(path)


def _mlpackage_with(path, spoiler, inside: str) -> str:
    package = spoiler.package_copy(A("mlpackage"), f"payload_{inside.replace('/', '_')}.mlpackage")
    with open(path, "rb") as src, open(os.path.join(package, inside), "wb") as dst:
        dst.write(src.read())
    return package


def _load_mlpackage_weights(path, spoiler):
    mil_executor.load_mlpackage(_mlpackage_with(path, spoiler, "Data/com.apple.CoreML/weights/weight.bin"))


def _load_mlpackage_model(path, spoiler):
    mil_executor.load_mlpackage(_mlpackage_with(path, spoiler, "Data/com.apple.CoreML/model.mlmodel"))


def _load_mlpackage_manifest(path, spoiler):
    mil_executor.load_mlpackage(_mlpackage_with(path, spoiler, "Manifest.json"))


LOADERS = {
    "checkpoint_weights": _load_checkpoint_weights,
    "checkpoint_metadata": _load_checkpoint_metadata,
    "torchscript": _load_torchscript,
    "gguf": _load_gguf,
    "mlpackage_weights": _load_mlpackage_weights,
    "mlpackage_model": _load_mlpackage_model,
    "mlpackage_manifest": _load_mlpackage_manifest,
    # run_mlpackage's feeds and states (verify/coreml/npz_arrays.py), with a check that accepts anything.
    "npz": lambda path, spoiler: npz_arrays.read(path, lambda name, shape, dtype: None),
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_loader_refuses_every_payload(loader, payload, spoiler, marker, tmp_path):
    path = str(tmp_path / f"{payload}.bin")
    with open(path, "wb") as handle:
        handle.write(PAYLOADS[payload](marker))
    with pytest.raises(InputError) as refused:
        LOADERS[loader](path, spoiler)
    # The refusal must be about the payload, not about some other input the fixture got wrong.
    # (the payload file itself, or the package made around it).
    assert path in str(refused.value) or "/payload_" in str(refused.value), refused.value


# ---- every binary, as a user runs it -------------------------------------------------------------

# binary -> (flags that point the payload at one input, where the payload goes)
BINARY_SLOTS = [
    ("run_toy_distill", "in"),
    ("run_toy_distill", "tokenizer"),
    ("export_pytorch", "weights"),
    ("export_pytorch", "metadata"),
    ("export_pytorch", "tokenizer"),
    ("convert_coreml", "weights"),
    ("convert_coreml", "contract"),
    ("export_gguf", "weights"),
    ("verify_contracts", "torchscript"),
    ("verify_contracts", "gguf"),
    ("verify_contracts", "mlpackage"),
    ("verify_contracts", "dataset"),
    ("verify_contracts", "torchscript_decoder"),
    ("verify_contracts", "torch_export"),
    ("verify_contracts", "aoti_decoder"),
    ("ask", "torchscript_decoder"),
    ("ask", "aoti_decoder"),
    ("ask", "gguf"),
    ("ask", "tokenizer"),
    ("run_mlpackage", "inputs"),
    ("run_mlpackage", "state_in"),
]


def _feeds(path: str) -> str:
    """Good feeds for the stateful package: one token at position 0."""
    np.savez(path, input_ids=np.array([[5]], np.int32), position=np.array([0], np.int32))
    return path


def _binary_flags(binary: str, spoiler, out: str) -> dict:
    small = spoil.small_dataset(A("dataset"), spoiler.path("kd_small.jsonl"))
    checkpoint_flags = {"weights": A("weights"), "metadata": A("metadata")}
    return {
        "run_toy_distill": {
            "in": small,
            "tokenizer": A("tokenizer"),
            "steps": 1,
            "out_weights": os.path.join(out, "w.safetensors"),
            "out_metadata": os.path.join(out, "w.json"),
        },
        "export_pytorch": {
            **checkpoint_flags,
            "tokenizer": A("tokenizer"),
            "floors": A("floors"),
            "out_torchscript": os.path.join(out, "m.pt"),
            "out_decoder": os.path.join(out, "m.decode.pt"),
            "out_contract": os.path.join(out, "c.json"),
        },
        "convert_coreml": {
            **checkpoint_flags,
            "contract": A("contract"),
            "out": os.path.join(out, "m.mlpackage"),
        },
        "export_gguf": {
            **checkpoint_flags,
            "tokenizer": A("tokenizer"),
            "out": os.path.join(out, "m.gguf"),
            "modelfile_out": os.path.join(out, "Modelfile"),
        },
        "verify_contracts": {
            **harness.verify_contracts_flags(small),
            "out_report": os.path.join(out, "report.json"),
        },
        "ask": {
            **harness.ask_flags(),
        },
        "run_mlpackage": {
            "mlpackage": A("mlpackage_stateful"),
            "inputs": _feeds(spoiler.path("feeds.npz")),
            "out": os.path.join(out, "outputs.npz"),
            "state_out": os.path.join(out, "state.npz"),
        },
    }[binary]


# Payloads per slot: the raw pickle everywhere; a torch.save zip where weights or TorchScript are read
# (the files someone would swap for a .pt from elsewhere); every TorchScript payload where TorchScript is
# read. Every payload meets every loader in process above, so the binaries need not repeat the matrix.
def _slot_payloads(slot: str) -> list[str]:
    if slot in ("torchscript", "torchscript_decoder"):
        return sorted(PAYLOADS)
    return ["pickle", "torch_save_zip"] if slot == "weights" else ["pickle"]


BINARY_CASES = [(b, slot, p) for b, slot in BINARY_SLOTS for p in _slot_payloads(slot)]


@pytest.mark.parametrize(
    ("binary", "slot", "payload"), BINARY_CASES, ids=[f"{b}-{s}-{p}" for b, s, p in BINARY_CASES]
)
def test_every_binary_refuses_payloads(binary, slot, payload, spoiler, marker, tmp_path):
    out = harness.fresh_dir(str(tmp_path / "out"))
    path = str(tmp_path / f"{payload}.bin")
    with open(path, "wb") as handle:
        handle.write(PAYLOADS[payload](marker))
    flags = _binary_flags(binary, spoiler, out)
    if slot == "mlpackage":
        flags["mlpackage"] = _mlpackage_with(path, spoiler, "Data/com.apple.CoreML/model.mlmodel")
    else:
        flags[slot] = path
    if slot == "weights":
        flags["metadata"] = _pinned_metadata(spoiler, path)
    if binary == "ask" and slot in ("gguf", "torchscript_decoder"):
        flags["backend"] = {"gguf": "gguf", "torchscript_decoder": "torchscript"}[slot]
    argv = ("Will it rain tomorrow?",) if binary == "ask" else ()
    result = harness.run(binary, flags, argv)
    outcome = harness.Outcome(result.returncode, result.stderr, harness.leftovers(out))
    # The message names the payload (not some other input the fixture got wrong).
    harness.assert_clean_failure(outcome, [flags[slot]], f"{binary} --{slot}=<{payload}>")


# ---- hostile packages: sizes and symlinks ---------------------------------------------------------
# A package's description sizes what the executor allocates (a state is zeroed in its declared shape),
# and its files are read wherever they lead. Each case below is the real package with one declaration
# or one file changed; each is refused before anything is allocated or read outside the package.

MODEL_FILE = "Data/com.apple.CoreML/model.mlmodel"
WEIGHT_FILE = "Data/com.apple.CoreML/weights/weight.bin"
HUGE_POSITIONS = 1 << 30  # a KV cache state of [2, 1, 2, 2^30, 32] float16 is 256 GiB


def _with_state_positions(spoiler, positions: int) -> str:
    """The stateful package whose description declares every state with `positions` slots (the
    program itself is unchanged: the description alone sizes the executor's state)."""
    from coremltools import proto

    package = spoiler.package_copy(A("mlpackage_stateful"), f"positions_{positions}.mlpackage")
    model = os.path.join(package, MODEL_FILE)
    spec = proto.Model_pb2.Model()
    with open(model, "rb") as handle:
        spec.ParseFromString(handle.read())
    assert len(spec.description.state) == 2
    for feature in spec.description.state:
        feature.type.stateType.arrayType.shape[3] = positions
    with open(model, "wb") as handle:
        handle.write(spec.SerializeToString())
    return package


def _with_symlink(spoiler, source: str, member: str, tag: str) -> str:
    """A copy of package `source` whose `member` is a symlink to an exact copy of that file placed
    outside the package: the bytes are good, the place is not."""
    package = spoiler.package_copy(source, f"symlink_{tag}.mlpackage")
    inside = os.path.join(package, member)
    outside = spoiler.path(f"outside_{tag}_{os.path.basename(member)}")
    shutil.copyfile(inside, outside)
    os.remove(inside)
    os.symlink(outside, inside)
    return package


def _address_space_limit() -> int:
    """1 GiB beyond what this process maps (torch imported): under it, an executor that allocated a
    hostile state would fail to, instead of taking the machine's memory."""
    with open("/proc/self/status", encoding="utf-8") as handle:
        mapped = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
    return mapped + (1 << 30)


def _limit_child():
    limit = _address_space_limit()
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # in the child, before exec


def test_a_state_of_2_30_positions_is_refused_before_allocating(spoiler):
    hostile = _with_state_positions(spoiler, HUGE_POSITIONS)
    with pytest.raises(InputError, match=r"state 'k_cache' declares shape \[2, 1, 2, 1073741824, 32\]"):
        mil_executor.load_mlpackage(hostile)
    _, cfg = checkpoint.check_metadata(A("metadata"))
    bounds = mil_executor.Bounds.for_model(cfg)
    with pytest.raises(InputError, match=f"the bound is {bounds.state_elements} elements .*max_seq_len 256"):
        mil_executor.load_mlpackage(hostile, bounds)
    # The good package fits the checkpoint's bounds exactly.
    program = mil_executor.load_mlpackage(A("mlpackage_stateful"), bounds)
    assert max(np.prod(shape) for shape, _ in program.state_specs.values()) == bounds.state_elements


def test_make_state_checks_the_bound_itself():
    """A program whose state declarations grew after loading: make_state refuses before np.zeros
    (under an address-space limit, so a missing check fails here instead of taking 256 GiB)."""
    program = mil_executor.load_mlpackage(A("mlpackage_stateful"))
    (shape, dtype) = program.state_specs["k_cache"]
    program.state_specs["k_cache"] = (shape[:3] + (HUGE_POSITIONS,) + shape[4:], dtype)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_address_space_limit(), hard))  # the soft limit only
    try:
        with pytest.raises(InputError, match="state 'k_cache' declares"):
            mil_executor.make_state(program)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("member", [MODEL_FILE, WEIGHT_FILE])
@pytest.mark.parametrize("package", ["mlpackage", "mlpackage_stateful"])
def test_a_symlink_under_data_that_leads_out_is_refused(spoiler, package, member):
    hostile = _with_symlink(spoiler, A(package), member, f"{package}_{os.path.basename(member)}")
    with pytest.raises(InputError, match="outside the package"):
        mil_executor.load_mlpackage(hostile)


# binary, flag, case -> the hostile package in that flag
HOSTILE_PACKAGE_RUNS = [
    ("run_mlpackage", "mlpackage", "state_2_30"),
    ("run_mlpackage", "mlpackage", "weights_symlink"),
    ("verify_contracts", "mlpackage_stateful", "state_2_30"),
    ("verify_contracts", "mlpackage", "model_symlink"),
    ("verify_contracts", "mlpackage", "weights_symlink"),
]


def _hostile_package(spoiler, binary: str, flag: str, case: str) -> tuple[str, str]:
    """(the hostile package for `flag`, what the error line must say). run_mlpackage's good feeds are
    the stateful package's, so its cases spoil that package."""
    if case == "state_2_30":
        return _with_state_positions(spoiler, HUGE_POSITIONS), "state 'k_cache'"
    source = A("mlpackage_stateful" if binary == "run_mlpackage" else flag)
    member = MODEL_FILE if case == "model_symlink" else WEIGHT_FILE
    return _with_symlink(spoiler, source, member, f"{binary}_{case}"), "outside the package"


@pytest.mark.parametrize(
    ("binary", "flag", "case"), HOSTILE_PACKAGE_RUNS, ids=[f"{b}-{f}-{c}" for b, f, c in HOSTILE_PACKAGE_RUNS]
)
def test_every_binary_refuses_hostile_packages(binary, flag, case, spoiler, tmp_path):
    out = harness.fresh_dir(str(tmp_path / "out"))
    flags = _binary_flags(binary, spoiler, out)
    flags[flag], says = _hostile_package(spoiler, binary, flag, case)
    result = harness.run(binary, flags, preexec_fn=_limit_child())
    outcome = harness.Outcome(result.returncode, result.stderr, harness.leftovers(out))
    harness.assert_clean_failure(outcome, [flags[flag], says], f"{binary} --{flag}=<{case}>")


# ---- the loader inventory ------------------------------------------------------------------------


def _project_sources() -> list[str]:
    """Every project .py file in the runfiles (the binaries bring all their libraries along)."""
    root = harness.runfiles_root()
    found = []
    for parent, dirs, files in os.walk(root):
        rel = os.path.relpath(parent, root)
        dirs[:] = [
            d for d in dirs if not (rel == "." and d in ("external", "tests")) and not d.endswith(".runfiles")
        ]
        found += [os.path.join(parent, f) for f in files if f.endswith(".py")]
    return sorted(found)


def _name(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    elif parts:
        parts.append("<expr>")  # a method of a call's result, `f(x).eval()`, is not the builtin eval
    return ".".join(reversed(parts))


def _keyword_is(node: ast.Call, key: str, value) -> bool:
    found = [k.value for k in node.keywords if k.arg == key]
    return bool(found) and isinstance(found[0], ast.Constant) and found[0].value is value


def _unsafe_calls(source: str, rel: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        where = f"{rel}:{node.lineno}: {name}"
        if name == "torch.load" and not _keyword_is(node, "weights_only", True):
            problems.append(f"{where} without weights_only=True")
        if (
            name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve")
            and "load" in name
        ):
            problems.append(f"{where} unpickles")
        has_allow_pickle = any(k.arg == "allow_pickle" for k in node.keywords)
        if name.endswith("np.load") and has_allow_pickle and not _keyword_is(node, "allow_pickle", False):
            problems.append(f"{where} with allow_pickle")
        if name in ("yaml.load", "yaml.unsafe_load"):
            problems.append(f"{where}: use yaml.safe_load")
        if name in ("eval", "exec"):
            problems.append(f"{where} runs text as code")
        if name == "torch.jit.load" and rel != "conversion/torchscript.py":
            problems.append(
                f"{where}: load TorchScript only through conversion.torchscript.load (it checks first)"
            )
    return problems


def test_no_loader_in_the_project_can_unpickle():
    sources = _project_sources()
    rels = {os.path.relpath(p, harness.runfiles_root()) for p in sources}
    # The scan must see the loaders it is about, or it proves nothing.
    assert {"training/checkpoint.py", "conversion/torchscript.py", "verify/gguf_files/gguf_check.py"} <= rels
    problems = []
    for path in sources:
        with open(path, encoding="utf-8") as handle:
            problems += _unsafe_calls(handle.read(), os.path.relpath(path, harness.runfiles_root()))
    assert not problems, "\n".join(problems)


def test_the_inventory_catches_unsafe_loads():
    """The scan itself, on lines it must reject and lines it must accept."""
    bad = [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "pickle.loads(data)",
        "np.load(path, allow_pickle=True)",
        "torch.jit.load(path)",
        "eval(text)",
    ]
    good = ["torch.load(path, weights_only=True)", "np.load(path)", "model.eval()", "json.loads(text)"]
    good += ["copy.deepcopy(model).eval()"]
    for line in bad:
        assert _unsafe_calls(line, "x.py"), line
    for line in good:
        assert not _unsafe_calls(line, "x.py"), line


def test_the_real_torchscript_archive_passes_the_check():
    torchscript_archive.check_file(A("torchscript"))
    with zipfile.ZipFile(A("torchscript")) as archive:
        assert any(name.endswith("data.pkl") for name in archive.namelist())
