"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on a free localhost
port, for the tests and the benchmark that need a real server: start() waits until GET /v1/models
answers, stop() ends it (SIGTERM, then SIGKILL after a grace period) and is safe to call twice.

The server runs a GGUF the way the in-process teacher does (data/teachers/gguf_teacher.py), so the
two can be compared number for number:

    --type_k 0 --type_v 0           an f32 KV cache (GGML_TYPE_F32), not the default f16
    --n_threads 1 --n_threads_batch 1
    --n_batch 1 --n_ubatch 1        one token per evaluation. The server keeps the longest prompt
                                    prefix it shares with the previous request and evaluates the
                                    rest as one batch, and the last bits of a batched evaluation
                                    depend on the batch: with larger batches the same request can
                                    answer 1e-6 differently after another request, and a resumed
                                    capture would not write the uninterrupted run's bytes.

The same settings make any capture from llama-cpp-python's server reproducible.
"""

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from common import child_python

REPRODUCIBLE = [
    "--type_k",
    "0",
    "--type_v",
    "0",
    "--n_threads",
    "1",
    "--n_threads_batch",
    "1",
    "--n_batch",
    "1",
    "--n_ubatch",
    "1",
]


def free_port() -> int:
    """A localhost port nothing listens on (bound and released; the server takes it right after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """The server for `gguf` as model `alias` on 127.0.0.1:port (a free one by default); its output
    goes to log_path. The port stays the same across stop() and start()."""

    def __init__(self, gguf: str, log_path: str, alias: str = "teacher", n_ctx: int = 512, port: int = 0):
        self.gguf, self.log_path, self.alias, self.n_ctx = gguf, log_path, alias, n_ctx
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The API base, e.g. http://127.0.0.1:8080/v1."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 90.0) -> None:
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            self.gguf,
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            *REPRODUCIBLE,
        ]
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(command, env=child_python.child_env(), stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise RuntimeError(f"llama_cpp.server exited with status {code}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise RuntimeError(
            f"llama_cpp.server did not answer /v1/models within {timeout:g} s: {self.log_tail()}"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, size: int = 2000) -> str:
        with open(self.log_path, "rb") as handle:
            return handle.read()[-size:].decode("utf-8", "replace")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
