"""Server responses kept on disk, one file per request, so a rerun or a resumed run asks nothing twice.

A request is keyed by the sha256 of its method, URL path and canonical JSON body (sorted keys, fixed
separators): not the host, so a server restarted on another port still hits, and never the API key,
which is no part of any of them. The file <cache_dir>/<key>.json holds {"request": ..., "response":
...} as canonical JSON, written atomically (a temporary name, then a rename: a run killed at any
moment leaves whole files or none). Only responses the teacher has read and accepted are stored
(put() is called after that), so a bad response is asked again on the next run, not replayed.

The files are untrusted input when read back (anyone can write into a directory): they are parsed
as JSON only, at most MAX_FILE_BYTES, and must hold exactly the request that names them, else
InputError naming the file. What the response says is checked again by the same code that checks a
fresh one.
"""

import hashlib
import json
import os
import threading

from common import atomic
from common.errors import InputError

MAX_FILE_BYTES = 64 << 20


def _canonical(obj) -> bytes:
    # NaN is allowed: a response's fields the teacher never reads are stored as they came.
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def request_key(method: str, path: str, body: dict | None) -> str:
    """sha256 hex of the request: method, URL path, canonical JSON body."""
    return hashlib.sha256(_canonical({"method": method, "path": path, "body": body})).hexdigest()


class ResponseCache:
    def __init__(self, directory: str):
        self.directory = directory
        self.hits = 0  # get() calls that found a file (the progress line reports them)
        self._lock = threading.Lock()  # get() and put() run in the teacher's worker threads
        self._made = False

    def _make_directory(self) -> None:
        """Created on the first put(), so a run that never gets a response leaves nothing behind."""
        with self._lock:
            if self._made:
                return
            try:
                os.makedirs(self.directory, exist_ok=True)
            except OSError as error:
                raise InputError(
                    f"--cache_dir {self.directory}: cannot create the response cache ({error.strerror})"
                ) from None
            self._made = True

    def _file(self, key: str) -> str:
        return os.path.join(self.directory, key + ".json")

    def get(self, method: str, path: str, body: dict | None):
        """The stored response to this request, or None."""
        request = {"method": method, "path": path, "body": body}
        name = self._file(request_key(method, path, body))
        try:
            with open(name, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise InputError(f"{name}: cannot read the cached response ({error.strerror})") from None
        what = "; delete it and the next run asks the server again"
        if len(raw) > MAX_FILE_BYTES:
            raise InputError(f"{name}: a cached response over {MAX_FILE_BYTES >> 20} MiB{what}")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            raise InputError(f"{name}: not a cached response ({str(error)[:120]}){what}") from None
        if not isinstance(doc, dict) or set(doc) != {"request", "response"}:
            raise InputError(f"{name}: not a cached response (keys request and response){what}")
        if doc["request"] != request:
            raise InputError(f"{name}: holds the response to another request than its name says{what}")
        with self._lock:
            self.hits += 1
        return doc["response"]

    def put(self, method: str, path: str, body: dict | None, response) -> None:
        self._make_directory()
        request = {"method": method, "path": path, "body": body}
        atomic.write_bytes(
            self._file(request_key(method, path, body)),
            _canonical({"request": request, "response": response}) + b"\n",
        )
