"""A pipeline tool prints nothing on success but what its user needs: library chatter off at its source.

    quiet.stage()  # first thing in a pipeline tool's main, before torch, coremltools or tqdm load

Bazel prints an action's stdout and stderr whenever either is non-empty ("INFO: From ..."), so
every line a stage tool prints lands on the terminal of `bazel run //pipeline:e2e`, once per
stage. Before this, a cold run printed 5,205 lines: 3,183 of them coremltools logging each op its
dead-code pass removed. What stage() turns off, each at its source and nothing else:

- the tool's own INFO log (paths, timings, progress), unless --verbosity is given on the command
  line (`--verbosity=0` brings it back). Warnings and errors stay: each is a sentence a user can
  act on;
- coremltools' INFO log: its logger is set to WARNING, so even --verbosity=0 does not bring back
  a line per removed op (absl's `--logger_levels=coremltools:INFO` does);
- coremltools' warnings that say nothing about this run, each matched by its message
  (COREMLTOOLS_NOISE says why each is harmless here): the native Core ML runtime is missing (it
  exists only on macOS), the installed torch is newer than the last one coremltools tested, index
  constants stored as int32, and the stateful package's cache buffers met twice. Every other
  coremltools warning still prints;
- tqdm's progress bars (coremltools draws one per pass pipeline and compression pass), through
  tqdm's own TQDM_DISABLE, read when tqdm is imported. An explicit TQDM_DISABLE in the
  environment wins.
"""

import logging
import os
import re

from absl import flags
from absl import logging as absl_logging

COREMLTOOLS_LOGGER = "coremltools"

# (why it says nothing about this run, pattern of the message) for coremltools' start-up warnings.
COREMLTOOLS_NOISE = (
    (
        "the native Core ML runtime ships for macOS only; verify/coreml/mil_executor.py runs packages here",
        re.compile(r"^Failed to load _ML\w+Proxy: No module named 'coremltools\.libcoremlpython'$"),
    ),
    (
        "every artifact is verified against PyTorch, whatever torch version coremltools last tested",
        re.compile(r"^Torch version \S+ has not been tested with coremltools\. "),
    ),
    (
        "the torch frontend stores index and shape constants (int64 in torch) as the int32 Core ML's "
        "ops take; every such value here is at most max_seq_len, and verification compares each "
        "package with PyTorch",
        re.compile(r"^Saving value type of int64 into a builtin type of int32, might lose precision!$"),
    ),
    (
        "the stateful package's KV-cache buffers are registered as Core ML states first, then met "
        "again in the trace, whose second registration coremltools skips; verify/coreml/coreml_spec.py "
        "checks the states",
        re.compile(r"^Torch var [kv]_cache is added again\.$"),
    ),
)


class _DropMatching(logging.Filter):
    """Drops the records whose message matches one of `patterns`; lets every other record through."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = tuple(patterns)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in self.patterns)


def libraries() -> None:
    """Silences coremltools' INFO log, its two start-up warnings above and tqdm's progress bars.

    Call before coremltools or tqdm is imported: both speak at import. Idempotent.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    logger = logging.getLogger(COREMLTOOLS_LOGGER)
    logger.setLevel(logging.WARNING)
    if not any(isinstance(f, _DropMatching) for f in logger.filters):
        logger.addFilter(_DropMatching(pattern for _, pattern in COREMLTOOLS_NOISE))


def own_logs() -> None:
    """The tool's own log shows warnings and errors only, unless --verbosity was given.

    Call after absl parsed the flags (in main): absl sets INFO when --verbosity is absent.
    """
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)


def stage() -> None:
    """Both: what a pipeline tool calls first in its main."""
    own_logs()
    libraries()


_LLAMA_CALLBACK = []  # the C side keeps the pointer: the callback must stay alive


def silence_llama_cpp() -> None:
    """Routes llama.cpp's log (model-loading chatter on stderr) to a no-op, once per process;
    `verbose=False` alone keeps its errors. Call it before the first model loads."""
    if _LLAMA_CALLBACK:
        return
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def drop(level, text, user_data):
        del level, text, user_data

    llama_cpp.llama_log_set(drop, ctypes.c_void_p(0))
    _LLAMA_CALLBACK.append(drop)
