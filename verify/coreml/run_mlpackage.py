"""Runs a saved ML Program package once on Linux, through the MIL executor (verify/coreml/mil_executor.py).

    run_mlpackage --mlpackage=magic-8-ball.stateful.mlpackage --inputs=feeds.npz --out=outputs.npz \\
        [--state_in=state.npz] [--state_out=state.npz]

--inputs holds one array per model input, named as the package names them, in one of the shapes
it enumerates; --out receives one array per output. A stateful package (iOS 18 states, such as
the KV cache of magic-8-ball.stateful.mlpackage) starts from --state_in, one array per state in
its declared shape and dtype, or from zeros as Core ML's makeState() does; --state_out receives
the states after the call. Passing one run's --state_out as the next run's --state_in continues a
sequence. Every array is checked against the package before it is read, so a state of the wrong
shape exits 2 naming the state, and nothing is written unless the call succeeds.
"""

import contextlib
import os

import numpy as np
from absl import flags

from common import atomic, cli
from common.errors import InputError
from verify.coreml import npz_arrays

flags.DEFINE_string("mlpackage", None, "The .mlpackage to run (required).")
flags.DEFINE_string("inputs", None, ".npz with one array per model input (required).")
flags.DEFINE_string("out", None, "Output .npz, one array per model output (required).")
flags.DEFINE_string("state_in", None, "Stateful packages: .npz with one array per state (default: zeros).")
flags.DEFINE_string("state_out", None, "Stateful packages: output .npz of the states after the call.")

FLAGS = flags.FLAGS


def _check_flags() -> None:
    for name in ("mlpackage", "inputs", "out"):
        cli.require_flag(FLAGS[name].value, name)
    if not os.path.isdir(FLAGS.mlpackage):
        raise InputError(f"--mlpackage: {FLAGS.mlpackage} is not a directory (an .mlpackage)")
    for name in ("inputs", "state_in"):
        path = FLAGS[name].value
        if path and not os.path.isfile(path):
            raise InputError(f"--{name}: {path}: file not found")
    cli.check_output_path(FLAGS.out, "out")
    if FLAGS.state_out:
        cli.check_output_path(FLAGS.state_out, "state_out")
    cli.check_distinct_outputs({"out": FLAGS.out, "state_out": FLAGS.state_out})


def _input_check(program):
    def check(name, shape, dtype):
        if name not in program.input_shapes:
            raise InputError(
                f"--inputs: {name!r} is not an input of {program.path} ({sorted(program.input_shapes)})"
            )
        if shape not in program.input_shapes[name] or dtype.kind != program.input_dtypes[name].kind:
            raise InputError(
                f"--inputs: input {name!r} is {dtype} {shape}; {program.path} takes "
                f"{program.input_dtypes[name]} in the shapes {sorted(program.input_shapes[name])}"
            )

    return check


def _state_check(program):
    def check(name, shape, dtype):
        if name not in program.state_specs:
            raise InputError(
                f"--state_in: {name!r} is not a state of {program.path} ({sorted(program.state_specs)})"
            )
        want_shape, want_dtype = program.state_specs[name]
        if shape != want_shape or dtype != want_dtype:
            raise InputError(
                f"--state_in: state {name!r} is {dtype} {shape}, but {program.path} declares "
                f"{want_dtype} {want_shape}; pass a --state_out of this package, or no --state_in"
            )

    return check


def main(argv: list[str]) -> None:
    del argv
    _check_flags()
    # The .npz files before coremltools (seconds to import, torch with it): a damaged or pickled one
    # fails fast. Their arrays' names and shapes are checked against the package once it is loaded.
    for name in ("inputs", "state_in"):
        if FLAGS[name].value:
            npz_arrays.check_headers(FLAGS[name].value)
    from verify.coreml import mil_executor  # coremltools: after the flags are known to be good

    program = mil_executor.load_mlpackage(FLAGS.mlpackage)
    if not program.state_specs and (FLAGS.state_in or FLAGS.state_out):
        raise InputError(f"--state_in/--state_out: {FLAGS.mlpackage} has no states")
    feeds = npz_arrays.read(FLAGS.inputs, _input_check(program))
    missing = sorted(set(program.input_shapes) - set(feeds))
    if missing:
        raise InputError(f"--inputs: {FLAGS.inputs} has no array for the input(s) {missing}")
    state = None
    if program.state_specs:
        state = mil_executor.make_state(program)
        if FLAGS.state_in:
            given = npz_arrays.read(FLAGS.state_in, _state_check(program))
            absent = sorted(set(program.state_specs) - set(given))
            if absent:
                raise InputError(f"--state_in: {FLAGS.state_in} has no array for the state(s) {absent}")
            state.values.update(given)
    outputs = mil_executor.evaluate(program, feeds, state)
    # Both files are written before either is renamed into place: a failed write leaves neither.
    with contextlib.ExitStack() as stack:
        np.savez(stack.enter_context(atomic.output_file(FLAGS.out)), **outputs)
        if FLAGS.state_out:
            np.savez(stack.enter_context(atomic.output_file(FLAGS.state_out)), **state.values)


if __name__ == "__main__":
    cli.run(main)
