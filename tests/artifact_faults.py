"""Faults for the artifacts tests/gate_faults.py leaves without one, each injected where the shipped
path sees it (//tests:gate_power).

A check that fails on one artifact proves nothing for another: every artifact has bounds of its
own, and a fault that the f32 artifacts' bounds catch sits inside the wide bounds of a 4-bit one.
So //tests:gate_power holds every gated (artifact, check) pair of the shipped report.json to a fault
on that very artifact (here or in tests/gate_faults.py), or to the test SHOWN_ELSEWHERE names. Each
fault runs through as much of verification as it needs (tests/gate_power.py):

ARTIFACT_FAULTS, a whole verification each:
  norm_eps_x10           the RMSNorm epsilon x10 (a configuration mistake), in every artifact that
                         had no numeric fault: the fp32 Core ML package, the int8 variant and the
                         stateful package (the epsilon const; the stateful package's prefill path,
                         its decode being what gate_faults' cache faults trip), the f16 and Q8_0
                         GGUFs and the f32 GGUF run with the f16 KV cache (the file's metadata), the
                         TorchScript model, decoder and torch.export program (re-exported from a
                         student with that epsilon; the decoder and the program as files of their
                         own, another file than the contract pins).
  output_rows_shifted    the output projection's rows one place down (a vocabulary entry inserted
                         before the rest): the only fault here large enough for the 4-bit variants'
                         top-1 bounds, whose floors are a tenth of all positions and more.
  flair_row_zeroed       the output row of one flair token zeroed (a vocabulary entry's weights lost
                         in export): the sampled replies of the backends `ask` and Ollama run stop
                         being canonical (the f32 GGUF with either KV cache, the TorchScript decoder,
                         the AOTInductor decoder, compiled again as the export step compiles it).
LENGTH_FAULTS, the per-length output checks only (their point is a per-length check):
  plan_wrong_type        the exporter's plan picking the wrong type for one tensor: the Q8_0 GGUF with
                         its output projection in Q4_0, the int4 package with its token embedding
                         quantized per tensor (one scale) instead of per block of 32. The quality
                         bounds catch these (conversion/gates.py): the independent reference keeps
                         the format's plan when the exporter's moves, and the emulation's floor with it.
  finer_variant_shipped  a finer variant under a coarser one's name (the f16 GGUF as Q8_0, the Q8_0
                         GGUF as Q4_0, the fp16 package as int8, the int8 package as int4): every
                         upper bound passes; the floor ratio (kl_mean_floor_ratio) fails, the
                         artifact far quieter than the emulation it is held to.
CHECK_FAULTS, the artifact's own checks only (spec, exact weights, tokenizer):
  gate_faults.COMPRESSED_FAULTS (one int8/int4 scale, zero point or 4-bit value; int8 as int4),
  the fp16 package under the int8 name (its spec: no int8 weight op, no compression metadata),
  fp16_output_declared (a real package converted with fp16 logits declared: the executor's float32
  cast hides the dtype from output_dtype, as a runtime hands back what the spec declares), a weight
  x1.003 and the weight consts renamed in the packages without such a fault, two vocabulary entries
  swapped in every GGUF file, another variant's file under the f32 and f16 names, and one edit of a
  copy of each Core ML package's spec per spec check (SPEC_EDITS, COMPRESSION_EDITS, STATEFUL_EDITS).

The RangeDim package is not a row: a real one is refused before any report
(gate_power_test, test_a_range_dim_package_is_refused_before_any_report).
"""

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable

import numpy as np
import torch

from conversion import coreml, gguf_export, gguf_quant, kv_decoder, torchscript
from conversion import gates as gates_lib
from tests import gate_faults
from tests.gate_faults import Fault, Shipped
from verify import verification
from verify.coreml import coreml_spec, mil_executor

EPS_FACTOR = gate_faults.EPS_FACTOR
OUTPUT = ("lm_head.weight", "lm_head_weight_to_fp16", "output.weight")
EMBEDDING = ("embed.weight", "embed_weight_to_fp16", "token_embd.weight")


# --- Core ML ------------------------------------------------------------------------------------


def _scale_eps(program, eps: float) -> None:
    """Every RMSNorm epsilon const (a float scalar equal to the model's epsilon) x EPS_FACTOR."""
    values = mil_executor.consts(program)
    names = [
        name
        for name, value in values.items()
        if np.ndim(value) == 0
        and np.issubdtype(np.asarray(value).dtype, np.floating)
        and abs(float(value) - eps) <= 0.01 * eps
    ]
    assert names, "no RMSNorm epsilon const found in the Core ML program"
    for name in names:
        mil_executor.set_const(program, name, np.asarray(values[name], dtype=np.float64) * EPS_FACTOR)


def _coreml_named(name: str, program, path: str) -> verification.Backend:
    """A stateless Core ML package as load_backends builds it, under the artifact name `name`."""
    contract_in, contract_out = "input_ids", "logits"
    return verification.Backend(
        name,
        path,
        lambda ids: mil_executor.run(program, ids, contract_in, contract_out),
        lambda report, contract, model: (
            verification.check_coreml_interface(report, contract, path, name),
            verification.check_coreml_weights(report, program, model, name),
        ),
    )


def _fp32_with(change: Callable) -> Callable[[Shipped], verification.Backend]:
    def inject(shipped: Shipped) -> verification.Backend:
        path = shipped.inputs.paths.mlpackage_fp32
        program = mil_executor.load_mlpackage(path)
        change(program)
        return _coreml_named("coreml_fp32", program, path)

    return inject


def _stateful_with(change: Callable) -> Callable[[Shipped], verification.Backend]:
    def inject(shipped: Shipped) -> verification.Backend:
        path = shipped.inputs.paths.mlpackage_stateful
        program = mil_executor.load_mlpackage(path)
        change(program)
        return verification.stateful_coreml_backend(path, shipped.inputs.tokenizer.pad_id, program=program)

    return inject


def _scaled(name: str) -> Callable:
    """change(program): the const `name` x SCALE (a weight tensor scaled by 0.3%)."""
    return lambda program: gate_faults._cm_update(program, name, lambda w: w * gate_faults.SCALE)


def _renamed(program) -> None:
    """Every weight const under another name (a converter upgrade that renames them): the weight
    check must not pass by finding nothing to compare."""
    for op in program.function.operations:
        name = op.outputs[0].name
        if op.op_type == "const" and "_weight" in name:
            op.outputs[0].name = name.replace("_weight", "_w")


def _compressed_renamed(name: str) -> Callable[[Shipped], verification.Backend]:
    def change(program):
        for op in program.function.operations:
            if op.op_type in mil_executor.CONSTEXPR_OPS and "_weight" in op.outputs[0].name:
                op.outputs[0].name = op.outputs[0].name.replace("_weight", "_w")

    return lambda shipped: _compressed(shipped, name, change)


def _fp32_eps(shipped: Shipped) -> verification.Backend:
    path = shipped.inputs.paths.mlpackage_fp32
    program = mil_executor.load_mlpackage(path)
    _scale_eps(program, shipped.model.cfg.norm_eps)
    return _coreml_named("coreml_fp32", program, path)


def _stateful_eps(shipped: Shipped) -> verification.Backend:
    """The stateful package's prefill path (every length, the replay). Its decode parity, minutes
    of one-token executor calls, is what gate_faults' three cache faults on this package trip; it
    is left out of this row."""
    path = shipped.inputs.paths.mlpackage_stateful
    program = mil_executor.load_mlpackage(path)
    _scale_eps(program, shipped.model.cfg.norm_eps)
    backend = verification.stateful_coreml_backend(path, shipped.inputs.tokenizer.pad_id, program=program)
    return dataclasses.replace(backend, steps=None)


def _compressed(shipped: Shipped, name: str, change: Callable, path: str | None = None):
    path = path or shipped.inputs.paths.artifact(name)
    program = mil_executor.load_mlpackage(path)
    change(program)
    return verification.compressed_coreml_backend(name, path, shipped.inputs.contract, program)


def _int8_eps(shipped: Shipped) -> verification.Backend:
    return _compressed(shipped, "coreml_int8", lambda p: _scale_eps(p, shipped.model.cfg.norm_eps))


def _roll_compressed_rows(program, weight: str) -> None:
    """Every const of the constexpr op holding `weight` that is per output row (its data and its
    scales) rolled one row down."""
    for role in ("data", "quantized_data", "scale"):
        try:
            name = mil_executor.compressed_input(program, weight + "_quantized", role)
        except KeyError:
            continue
        value = np.array(mil_executor.consts(program)[name])
        if value.ndim >= 1 and value.shape[0] > 1:
            mil_executor.set_const(program, name, np.roll(value, 1, axis=0))


def _int4_rows_shifted(shipped: Shipped) -> verification.Backend:
    return _compressed(shipped, "coreml_int4", lambda p: _roll_compressed_rows(p, OUTPUT[1]))


def _fp16_as_int8(shipped: Shipped) -> verification.Backend:
    """The uncompressed fp16 package shipped under the int8 name."""
    return _compressed(shipped, "coreml_int8", lambda p: None, shipped.inputs.paths.mlpackage)


def _int4_embedding_per_tensor(shipped: Shipped) -> verification.Backend:
    """The int4 package converted as the pipeline does, except that the plan compresses the token
    embedding per tensor (one scale for the whole matrix) instead of per block of 32."""
    import coremltools as ct
    from coremltools.optimize import coreml as cto

    from conversion import coreml_compress

    contract = shipped.inputs.contract
    mlmodel = coreml.convert(
        shipped.model,
        list(contract.lengths),
        contract.default_length,
        "fp16",
        {"short_description": "fault", "version": "fault"},
        ct.target.iOS18,
    )
    config = coreml_compress.config("int4")
    planted = cto.OpLinearQuantizerConfig(
        mode=coreml_compress.MODE,
        dtype="int4",
        granularity="per_tensor",
        weight_threshold=coreml_compress.WEIGHT_THRESHOLD,
    )
    config.set_op_name(EMBEDDING[1], planted)
    compressed = cto.linear_quantize_weights(mlmodel, config)
    compressed.user_defined_metadata["compression"] = "int4"
    path = os.path.join(shipped.tmp, "int4_embedding_per_tensor.mlpackage")
    shutil.rmtree(path, ignore_errors=True)
    coreml.save_mlpackage(compressed, path)
    program = mil_executor.load_mlpackage(path)
    return verification.compressed_coreml_backend("coreml_int4", path, contract, program)


def _fp16_output_declared(shipped: Shipped) -> verification.Backend:
    """A package converted without the float32 output type: an iOS16 fp16 program then declares
    and returns fp16 logits. The executor casts to float32 as it returns, so the spec is where the
    shipped path sees the fault."""
    import coremltools as ct

    contract = shipped.inputs.contract
    traced = torchscript.trace(shipped.model, contract.default_length)
    shapes = ct.EnumeratedShapes(
        shapes=[[1, t] for t in contract.lengths], default=[1, contract.default_length]
    )
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name=contract.inputs[0].name, shape=shapes, dtype=np.int32)],
        outputs=[ct.TensorType(name=contract.outputs[0].name)],
        convert_to="mlprogram",
        minimum_deployment_target=coreml.DEPLOYMENT_TARGET,
        compute_precision=coreml.PRECISIONS["fp16"],
    )
    coreml.apply_metadata(mlmodel, {"short_description": "fault", "version": "fault"}, "fp16")
    path = os.path.join(shipped.tmp, "fp16_output.mlpackage")
    shutil.rmtree(path, ignore_errors=True)
    coreml.save_mlpackage(mlmodel, path)
    return _coreml_named("coreml", mil_executor.load_mlpackage(path), path)


# Spec faults: one edit of a copy of the shipped package's spec per check, run through the
# artifact's interface checks (they read the spec from the file; the program that computes is the
# shipped one, and an interface-only row runs none of it).


def _array(feature):
    return feature.type.multiArrayType


def _enumerated(spec):
    return _array(spec.description.input[0]).enumeratedShapes.shapes


def _add_length(spec):
    shapes = sorted(tuple(s.shape) for s in _enumerated(spec))
    extra = _enumerated(spec).add()
    extra.shape.extend([1, (shapes[0][1] + shapes[1][1]) // 2])


def _program_output_fixed(spec):
    function = spec.mlProgram.functions["main"]
    for op in function.block_specializations[function.opset].operations:
        for out in op.outputs:
            if out.name == spec.description.output[0].name:
                out.type.tensorType.dimensions[1].constant.size = 128


_FP16 = coreml_spec.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16
_FP32 = coreml_spec.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
# check -> an edit of a stateless package's spec that this check must catch.
SPEC_EDITS = {
    "spec_input_names": lambda spec: setattr(spec.description.input[0], "name", "tokens"),
    "spec_input_dtype": lambda spec: setattr(_array(spec.description.input[0]), "dataType", _FP32),
    "spec_input_enumerated_shapes": lambda spec: _enumerated(spec).__delitem__(-1),
    "spec_input_default_shape": lambda spec: _array(spec.description.input[0]).shape.__setitem__(1, 1),
    "spec_other_lengths_unsupported": _add_length,
    "spec_output_names": lambda spec: setattr(spec.description.output[0], "name", "scores"),
    "spec_output_dtype": lambda spec: setattr(_array(spec.description.output[0]), "dataType", _FP16),
    "spec_output_shape_not_frozen": lambda spec: _array(spec.description.output[0]).shape.extend(
        [1, 128, 512]
    ),
    "spec_program_output_length_dynamic": _program_output_fixed,
}
# The compressed variants' target and metadata (their weight op: the finer_variant_shipped and
# int8_shipped_as_int4 rows).
COMPRESSION_EDITS = {
    "spec_deployment_target": lambda spec: setattr(
        spec, "specificationVersion", spec.specificationVersion + 1
    ),
    "spec_compression_metadata": lambda spec: spec.description.metadata.userDefined.pop("compression"),
}


def _state(spec, index):
    return spec.description.state[index]


STATEFUL_EDITS = {
    "spec_deployment_target": lambda spec: setattr(spec, "specificationVersion", 8),
    "spec_state_names": lambda spec: setattr(_state(spec, 1), "name", "values"),
    "spec_state_shapes": lambda spec: _state(spec, 0).type.stateType.arrayType.shape.__setitem__(3, 7),
    "spec_state_dtypes": lambda spec: setattr(_state(spec, 1).type.stateType.arrayType, "dataType", _FP32),
    "spec_input_names": lambda spec: setattr(spec.description.input[1], "name", "pos"),
    "spec_input_dtypes": lambda spec: setattr(_array(spec.description.input[1]), "dataType", _FP32),
    "spec_input_shapes": lambda spec: _enumerated(spec)[0].shape.__setitem__(1, 2),
    "spec_output_names": lambda spec: setattr(spec.description.output[0], "name", "scores"),
    "spec_output_dtypes": lambda spec: setattr(_array(spec.description.output[0]), "dataType", _FP16),
    "spec_state_metadata": lambda spec: spec.description.metadata.userDefined.pop("state_names"),
}


def _spec_edited(artifact: str, edit: Callable) -> Callable[[Shipped], verification.Backend]:
    """The artifact's package copied with `edit(spec)` applied to its spec; the backend computes
    with the shipped program, and its interface checks read the copy."""

    def inject(shipped: Shipped) -> verification.Backend:
        source = shipped.inputs.paths.artifact(artifact)
        path = os.path.join(shipped.tmp, f"spec.{artifact}.mlpackage")
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(source, path)
        spec, model_path = coreml_spec.read_spec(path)
        edit(spec)
        with open(model_path, "wb") as handle:
            handle.write(spec.SerializeToString())
        program = mil_executor.load_mlpackage(source)
        if artifact == "coreml_stateful":
            return verification.stateful_coreml_backend(
                path, shipped.inputs.tokenizer.pad_id, program=program
            )
        if artifact in verification.COREML_COMPRESSED:
            return verification.compressed_coreml_backend(artifact, path, shipped.inputs.contract, program)
        return _coreml_named(artifact, program, path)

    return inject


def _spec_faults() -> tuple[Fault, ...]:
    stateless = ("coreml", "coreml_fp32", "coreml_int8", "coreml_int4")
    faults = [
        Fault(
            f"spec_edit:{check[5:]}", f"the spec fails {check}", {a: _spec_edited(a, edit) for a in stateless}
        )
        for check, edit in SPEC_EDITS.items()
    ]
    faults += [
        Fault(
            f"spec_edit:{check[5:]}",
            f"the spec fails {check}",
            {a: _spec_edited(a, edit) for a in verification.COREML_COMPRESSED},
        )
        for check, edit in COMPRESSION_EDITS.items()
    ]
    faults += [
        Fault(
            f"stateful_spec_edit:{check[5:]}",
            f"the spec fails {check}",
            {"coreml_stateful": _spec_edited("coreml_stateful", edit)},
        )
        for check, edit in STATEFUL_EDITS.items()
    ]
    return tuple(faults)


# --- GGUF ---------------------------------------------------------------------------------------


def _gguf_copy_edit(shipped: Shipped, backend: str, source: str, tag: str, change: Callable):
    """A copy of the GGUF at `source` whose bytes change(reader) edits (a writable memory map),
    loaded as `backend` (verification.gguf_backend: its cache, tokenizer and content checks)."""
    import gguf

    path = os.path.join(shipped.tmp, f"{tag}.{backend}.gguf")
    shutil.copyfile(source, path)
    reader = gguf.GGUFReader(path, "r+")
    change(reader)
    reader.data.flush()
    del reader
    return verification.gguf_backend(backend, path, shipped.inputs)


def _field(reader, key: str) -> np.ndarray:
    field = reader.fields[key]
    return field.parts[field.data[0]]


def _gg_eps(backend: str, source_field: str):
    key = "llama.attention.layer_norm_rms_epsilon"

    def inject(shipped: Shipped) -> verification.Backend:
        source = getattr(shipped.inputs.paths, source_field)
        return _gguf_copy_edit(shipped, backend, source, "eps", lambda r: _field(r, key).__imul__(EPS_FACTOR))

    return inject


def _gg_rows_shifted(shipped: Shipped) -> verification.Backend:
    def change(reader):
        tensor = next(t for t in reader.tensors if t.name == OUTPUT[2])
        rows = tensor.data.reshape(int(tensor.shape[-1]), -1)  # GGUF shapes list ne[0] first
        rows[:] = np.roll(rows.copy(), 1, axis=0)

    source = shipped.inputs.paths.gguf_q4_0
    return _gguf_copy_edit(shipped, "gguf_q4_0", source, "rows_shifted", change)


def _gg_shipped_as(backend: str, source_field: str):
    def inject(shipped: Shipped) -> verification.Backend:
        path = os.path.join(shipped.tmp, f"{source_field}_as_{backend}.gguf")
        shutil.copyfile(getattr(shipped.inputs.paths, source_field), path)
        return verification.gguf_backend(backend, path, shipped.inputs)

    return inject


def _gg_q8_0_output_q4_0(shipped: Shipped) -> verification.Backend:
    """The Q8_0 GGUF written by the exporter with a plan that stores the output projection in Q4_0:
    the exporter's own read-back check agrees with the planted plan, so the file is written."""
    path = os.path.join(shipped.tmp, "q8_0_output_q4_0.gguf")
    planted = {**gguf_quant._OVERRIDES, "Q8_0": {OUTPUT[2]: gguf_quant.T.Q4_0}}
    original = gguf_quant._OVERRIDES
    gguf_quant._OVERRIDES = planted
    try:
        gguf_export.export(shipped.model, shipped.inputs.tokenizer, path, dtype="Q8_0")
    finally:
        gguf_quant._OVERRIDES = original
    return verification.gguf_backend("gguf_q8_0", path, shipped.inputs)


def _swap_two_tokens(shipped: Shipped) -> Callable:
    """change(reader): two used tokens of the same byte length trade places in the vocabulary."""
    tokenizer = shipped.inputs.tokenizer
    used = sorted({i for text in shipped.inputs.strings for i in tokenizer.encode(text)})

    def change(reader):
        parts = gate_faults._token_parts(reader)
        by_length = {}
        for i in used:
            by_length.setdefault(len(parts[i]), []).append(i)
        a, b = next(ids for size, ids in sorted(by_length.items()) if size > 1 and len(ids) >= 2)[:2]
        parts[a][:], parts[b][:] = parts[b].copy(), parts[a].copy()

    return change


def _gg_tokens_swapped(backend: str):
    def inject(shipped: Shipped) -> verification.Backend:
        source = shipped.inputs.paths.artifact(backend)
        return _gguf_copy_edit(shipped, backend, source, "swap", _swap_two_tokens(shipped))

    return inject


def _gg_weight_scaled(backend: str):
    """One matrix of an unquantized GGUF (f16 here) x SCALE, in the file's own type."""

    def inject(shipped: Shipped) -> verification.Backend:
        def change(reader):
            data = gate_faults._tensor(reader, gate_faults.WEIGHT[2])
            data[...] = (data.astype(np.float32) * np.float32(gate_faults.SCALE)).astype(data.dtype)

        source = shipped.inputs.paths.artifact(backend)
        return _gguf_copy_edit(shipped, backend, source, "scaled", change)

    return inject


def _flair_token(shipped: Shipped) -> int:
    """The id of the last token of a canonical reply with the sparkles flair: the token that ends
    a quarter of the canonical answers."""
    from data import teacher

    answer = next(a for a in range(len(teacher.ANSWERS)) if teacher.flair(a) == "\u2728")
    return shipped.inputs.tokenizer.encode(teacher.completion_text(answer))[-1]


def _gg_flair_row_zeroed(backend: str):
    """The f32 GGUF with the flair token's row of the output projection zeroed: replies that end
    with that flair take another token, and the sampled replies stop being canonical."""

    def inject(shipped: Shipped) -> verification.Backend:
        token = _flair_token(shipped)

        def change(reader):
            tensor = next(t for t in reader.tensors if t.name == OUTPUT[2])
            tensor.data.reshape(int(tensor.shape[-1]), -1)[token] = 0

        return _gguf_copy_edit(shipped, backend, shipped.inputs.paths.gguf, "flair_row", change)

    return inject


# --- TorchScript decoder --------------------------------------------------------------------------


def _eps_student(shipped: Shipped):
    """The shipped student with every RMSNorm epsilon x EPS_FACTOR, in eval mode."""
    student = copy.deepcopy(shipped.model)
    for module in student.modules():
        if hasattr(module, "eps"):
            module.eps *= EPS_FACTOR
    return student.eval()


def _decoder_from(shipped: Shipped, student, tag: str) -> verification.Backend:
    """The decoder exported from `student` as the export step does, written to its own file."""
    module = kv_decoder.export(student, list(shipped.inputs.contract.lengths))
    path = os.path.join(shipped.tmp, f"{tag}.decode.pt")
    with open(path, "wb") as handle:
        handle.write(torchscript.to_bytes(module))  # as export_pytorch writes it
    return verification.decoder_backend(path, torchscript.load(path), shipped.inputs.paths.metadata)


def _decoder_flair_row_zeroed(shipped: Shipped) -> verification.Backend:
    student = copy.deepcopy(shipped.model).eval()
    with torch.no_grad():
        student.lm_head.weight[_flair_token(shipped)] = 0.0
    return _decoder_from(shipped, student, "flair_row")


def _aoti_flair_row_zeroed(shipped: Shipped) -> verification.Backend:
    """The AOTInductor decoder compiled (conversion/aoti_decoder.py, as the export step compiles it)
    from the student with the flair token's output row zeroed. The export step pins what it
    compiled, so the contract this file is checked against records the new shared object; the file
    is still another than the contract pins (sha256_matches_contract)."""
    from conversion import aoti_decoder, pt2_archive

    student = copy.deepcopy(shipped.model).eval()
    with torch.no_grad():
        student.lm_head.weight[_flair_token(shipped)] = 0.0
    package, build = aoti_decoder.compile_package(aoti_decoder.export_program(student))
    build = {**build, "so_sha256": pt2_archive.so_sha256(package)}  # as export_pytorch records it
    path = os.path.join(shipped.tmp, "flair_row.decode.pt2")
    with open(path, "wb") as handle:
        handle.write(package)
    contract = shipped.inputs.contract
    compiled = {**contract.compiled, "aoti_decoder": build}
    return verification.aoti_backend(
        path, dataclasses.replace(contract, compiled=compiled), shipped.inputs.paths.metadata
    )


def _torchscript_eps(shipped: Shipped) -> verification.Backend:
    """The student with every RMSNorm epsilon x10 traced as the export step traces it."""
    traced = torchscript.trace(_eps_student(shipped), shipped.inputs.contract.default_length)
    path = shipped.inputs.paths.torchscript
    return verification.Backend("torchscript", path, torchscript.numpy_forward(traced))


def _torch_export_eps(shipped: Shipped) -> verification.Backend:
    """The torch.export program exported (conversion/export_program.py) from the student with every
    RMSNorm epsilon x10, written and loaded as the export step and verification do."""
    from conversion import export_program

    contract, student = shipped.inputs.contract, _eps_student(shipped)
    program = export_program.export(
        student, list(contract.lengths), student.cfg.max_seq_len, contract.default_length
    )
    path = os.path.join(shipped.tmp, "eps.pt2")
    with open(path, "wb") as handle:
        handle.write(export_program.to_bytes(program))
    forward = export_program.numpy_forward(export_program.load(path))
    return verification.Backend("torch_export", path, forward)


def _decoder_eps(shipped: Shipped) -> verification.Backend:
    """The decoder exported (kv_decoder.export, checked against its own eager model) from the
    student with every RMSNorm epsilon x10: another file than the one the contract pins."""
    return _decoder_from(shipped, _eps_student(shipped), "eps")


ARTIFACT_FAULTS = (
    Fault(
        "norm_eps_x10",
        f"RMSNorm epsilon x {EPS_FACTOR:g}",
        {
            "coreml_fp32": _fp32_eps,
            "coreml_int8": _int8_eps,
            "coreml_stateful": _stateful_eps,
            "gguf_f16": _gg_eps("gguf_f16", "gguf_f16"),
            "gguf_q8_0": _gg_eps("gguf_q8_0", "gguf_q8_0"),
            "gguf_kv_f16": _gg_eps("gguf_kv_f16", "gguf"),
            "torchscript": _torchscript_eps,
            "torchscript_decoder": _decoder_eps,
            "torch_export": _torch_export_eps,
        },
    ),
    Fault(
        "output_rows_shifted",
        "the output projection's rows one place down",
        {"gguf_q4_0": _gg_rows_shifted, "coreml_int4": _int4_rows_shifted},
    ),
    Fault(
        "flair_row_zeroed",
        "the output row of one flair token zeroed (a vocabulary entry's weights lost in export)",
        {
            "gguf": _gg_flair_row_zeroed("gguf"),
            "gguf_kv_f16": _gg_flair_row_zeroed("gguf_kv_f16"),
            "torchscript_decoder": _decoder_flair_row_zeroed,
            "aoti_decoder": _aoti_flair_row_zeroed,
        },
    ),
)
# Faults whose point is a per-length check (a quality bound, the floor ratio): run through the
# per-length output checks alone (tests/gate_power.py, run_length_faults), seconds each.
LENGTH_FAULTS = (
    Fault(
        "plan_wrong_type",
        "one tensor in another type than the format's plan",
        {"gguf_q8_0": _gg_q8_0_output_q4_0, "coreml_int4": _int4_embedding_per_tensor},
    ),
    Fault(
        "finer_variant_shipped",
        "a finer variant under a coarser one's name",
        {
            "gguf_q8_0": _gg_shipped_as("gguf_q8_0", "gguf_f16"),
            "gguf_q4_0": _gg_shipped_as("gguf_q4_0", "gguf_q8_0"),
            "coreml_int8": _fp16_as_int8,
            "coreml_int4": gate_faults._int4_is_int8,
        },
    ),
)
# Faults only an artifact's own checks can see (its spec, its exact weights, its tokenizer): run
# through Backend.interface_check alone (tests/gate_power.py, run_content_faults), seconds each.
CHECK_FAULTS = (
    *gate_faults.COMPRESSED_FAULTS,
    Fault(
        "fp16_shipped_as_int8", "the uncompressed package under the int8 name", {"coreml_int8": _fp16_as_int8}
    ),
    Fault("fp16_output_declared", "a package declaring fp16 logits", {"coreml": _fp16_output_declared}),
    Fault(
        "scale_0.3%",
        f"{gate_faults.WEIGHT[0]} x {gate_faults.SCALE}",
        {
            "coreml_fp32": _fp32_with(_scaled(gate_faults.WEIGHT[1].removesuffix("_to_fp16"))),
            "coreml_stateful": _stateful_with(_scaled("model_" + gate_faults.WEIGHT[1])),
            "gguf_f16": _gg_weight_scaled("gguf_f16"),
        },
    ),
    Fault(
        "weight_consts_renamed",
        "the weight consts under other names",
        {
            "coreml_fp32": _fp32_with(_renamed),
            "coreml_stateful": _stateful_with(_renamed),
            "coreml_int8": _compressed_renamed("coreml_int8"),
            "coreml_int4": _compressed_renamed("coreml_int4"),
        },
    ),
    Fault(
        "token_ids_swapped",
        "two vocabulary entries swapped",
        {name: _gg_tokens_swapped(name) for name in ("gguf_f16", "gguf_q8_0", "gguf_q4_0")},
    ),
    Fault(
        "variant_under_another_name",
        "another variant's file under this one's name",
        {"gguf": _gg_shipped_as("gguf", "gguf_f16"), "gguf_f16": _gg_shipped_as("gguf_f16", "gguf")},
    ),
    *_spec_faults(),
)
# Each spec edit fails the check it is for, on every artifact it is applied to.
MUST_CATCH_SPEC = {fault.name: "spec_" + fault.name.split(":", 1)[1] for fault in _spec_faults()}
# The check through which each fault must fail on each artifact (besides any other): the point of
# the fault (//tests:gate_power checks it).
MUST_CATCH = {
    ("plan_wrong_type", "gguf_q8_0"): "quality_kl_mean",
    ("plan_wrong_type", "coreml_int4"): "quality_kl_mean",
    ("finer_variant_shipped", "gguf_q8_0"): "kl_mean_floor_ratio",
    ("finer_variant_shipped", "gguf_q4_0"): "kl_mean_floor_ratio",
    ("finer_variant_shipped", "coreml_int8"): "kl_mean_floor_ratio",
    ("finer_variant_shipped", "coreml_int4"): "kl_mean_floor_ratio",
    ("fp16_output_declared", "coreml"): "spec_output_dtype",
    ("fp16_shipped_as_int8", "coreml_int8"): "spec_compressed_weight_ops",
}

# Gated (artifact, check) pairs no fault on that artifact trips, and the test that fails each.
_SHAPES = "//verify:verification_checks_test"
_CONTRACTS = "//verify:verify_contracts_test"
SHOWN_ELSEWHERE = {
    # The shape check is the same code under every name; the TorchScript export's dropped position
    # (gate_faults) is the one realistic fault of an artifact's own making.
    **{
        (name, "output_shape"): f"{_SHAPES} (test_logits_for_one_position_too_few_fail_output_shape)"
        for name in gates_lib.DEFAULT_BACKENDS
        if name != "torchscript"
    },
    **{
        (
            name,
            "output_dtype",
        ): f"{_SHAPES} (test_float16_logits_fail_output_dtype_where_the_runtime_can_return_them)"
        for name in gates_lib.DTYPE_GATED_BACKENDS
    },
    ("torchscript", "sha256_matches_contract"): f"{_CONTRACTS} (test_a_broken_torchscript_fails_the_gates)",
}


def range_dim_package(shipped: Shipped) -> str:
    """A real package converted with a RangeDim (1..longest) instead of the contract's enumerated
    lengths; verification must refuse it before any report."""
    import coremltools as ct

    contract = shipped.inputs.contract
    traced = torchscript.trace(shipped.model, contract.default_length)
    length = ct.RangeDim(1, max(contract.lengths), default=contract.default_length)
    mlmodel = ct.convert(
        traced,
        inputs=[ct.TensorType(name=contract.inputs[0].name, shape=(1, length), dtype=np.int32)],
        outputs=[ct.TensorType(name=contract.outputs[0].name, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=coreml.DEPLOYMENT_TARGET,
        compute_precision=coreml.PRECISIONS["fp16"],
    )
    path = os.path.join(shipped.tmp, "range.mlpackage")
    shutil.rmtree(path, ignore_errors=True)
    coreml.save_mlpackage(mlmodel, path)
    return path
