"""The Core ML int8/int4 variants: what coremltools writes for them, byte-reproducibly, and the
flags that choose them (unknown variants and targets too old for int4 exit 2)."""

import os

import numpy as np
import pytest

from common import child_python, digest
from conversion import convert_coreml, coreml, coreml_compress
from training.model import ModelConfig, Student, init_weights
from verify.coreml import coreml_spec, mil_executor

LENGTHS = [32, 64]
METADATA = {"short_description": "test", "version": "1"}
# A small student whose every matrix dimension is a multiple of the int4 block size.
CONFIG = ModelConfig(d_model=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=128, max_seq_len=64)


def student() -> Student:
    model = Student(CONFIG)
    init_weights(model, seed=0)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(coreml_compress.COMPRESSIONS))
def variant(request, tmp_path_factory):
    compression = request.param
    target = coreml_compress.TARGETS[coreml_compress.COMPRESSIONS[compression][3]]
    model = student()
    root = tmp_path_factory.mktemp(compression)
    paths = []
    for name in ("a", "b"):  # two conversions: the same bytes
        mlmodel = coreml.convert(model, LENGTHS, LENGTHS[-1], "fp16", METADATA, target)
        path = str(root / f"{name}.mlpackage")
        coreml.save_mlpackage(coreml_compress.compress(mlmodel, compression), path)
        paths.append(path)
    return compression, model, paths


def test_variant_bytes_are_reproducible(variant):
    _, _, (first, second) = variant
    assert digest.describe(first) == digest.describe(second)


def test_every_weight_matrix_is_compressed_as_the_variant_says(variant):
    compression, model, (path, _) = variant
    program = mil_executor.load_mlpackage(path)
    held = mil_executor.materialized_weights(program)
    matrices = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    assert sorted(held) == sorted(n.replace(".", "_") + "_to_fp16_quantized" for n in matrices)
    for name, weight in matrices.items():
        expected = coreml_compress.quantize_like_package(
            weight.detach().numpy().astype(np.float16), compression
        )
        np.testing.assert_array_equal(held[name.replace(".", "_") + "_to_fp16_quantized"], expected)
        # Each scale's group (a row for int8, 32 columns of a row for int4) takes at most 2^bits values.
        width = expected.shape[1] if compression == "int8" else 32
        groups = expected.reshape(-1, width)
        most = max(len(np.unique(group)) for group in groups)
        assert most <= 2 ** int(compression[3:]), f"{name}: {most} values in one {compression} group"
    compressed, total = mil_executor.compression_share(program)
    assert compressed == sum(p.numel() for p in matrices.values())
    # What stays fp16: the RoPE tables (by choice) and the norm vectors.
    rope = 2 * CONFIG.max_seq_len * CONFIG.head_dim
    norms = (2 * CONFIG.n_layers + 1) * CONFIG.d_model
    assert total - compressed >= rope + norms


def test_spec_names_the_target_and_the_weight_op(variant):
    compression, _, (path, _) = variant
    results = coreml_spec.check_compression(path, compression)
    assert all(r.ok for r in results), results
    other = "int4" if compression == "int8" else "int8"
    assert {r.name for r in coreml_spec.check_compression(path, other) if not r.ok} == {
        "deployment_target",
        "compression_metadata",
        "compressed_weight_ops",
    }


def test_binary_mirror_of_the_variants_agrees():
    assert convert_coreml.COMPRESSIONS == {k: v[3] for k, v in coreml_compress.COMPRESSIONS.items()}
    assert list(convert_coreml.TARGETS) == list(coreml_compress.TARGETS)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--compress=int2"], "--compress: 'int2' is not a Core ML variant; allowed: none, int8, int4"),
        (["--compress=int4", "--target=iOS16"], "allowed targets for int4: iOS18"),
        (["--compress=int4", "--target=iOS17"], "allowed targets for int4: iOS18"),
        (["--target=iOS15"], "--target: 'iOS15'; allowed: iOS16, iOS17, iOS18"),
        (["--compress=int8", "--precision=fp32"], "use --precision=fp16"),
    ],
)
def test_bad_variants_exit_2_with_the_allowed_values_and_write_nothing(flags, message, tmp_path):
    out = str(tmp_path / "m.mlpackage")
    args = ["--weights=w", "--metadata=m", "--contract=c", f"--out={out}", *flags]
    done = child_python.run_module("conversion.convert_coreml", args)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(out)
