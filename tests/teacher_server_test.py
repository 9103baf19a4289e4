"""`make_toy_kd --teacher=openai:URL` against a real server: llama-cpp-python's OpenAI-compatible
server (`python -m llama_cpp.server`) on a free localhost port, serving the `wide` configuration's
GGUF, whose vocabulary is the student tokenizer's (so the handshake passes).

Every run goes through a front: a small proxy on localhost (data/remote/fake_openai.Server) that
passes requests on to the server, counts them, and can delay them, answer 429 twice first, or strip
the log-probabilities from the responses. The dataset header records the front's URL, which stays
the same while the server behind it is stopped and started again.

The cases: the server's replies are the in-process GGUF teacher's (`--teacher=gguf:`), greedy, with
log-probabilities within a bound measured here in process (below); a rerun sends no request at all
(the server is down by then) and writes the same bytes; a server killed mid-run fails the run (exit
2, no file) and, restarted, the rerun finishes with the uninterrupted run's bytes; two 429s are
retried and logged; responses without log-probabilities and an endpoint that is down are exit 2
with no file. The server is always stopped, also when a case fails.

The server runs with data/remote/local_server.py's settings: an f32 KV cache and one thread, as the
in-process teacher, and one token per evaluation, without which its answers depend in the last
digit on the request before (the resume case fails without it).

The bound. The server computes log-probabilities from llama.cpp's scores in float32
(llama-cpp-python's Llama.logits_to_logprobs), the GGUF teacher in float64 from the same scores.
The floor is measured in process on the same model and records: the
largest difference over every written list entry between float32 and float64 log-softmax of the
scores of the record evaluated one token at a time (as the server does), and between those float64
values and the GGUF teacher's written ones (which evaluated the prompt in one batch). The bound is
4 x that floor + 1e-6 (the two sides each round to 6 decimals).

The subjects come from Bazel (tests/BUILD.bazel): M8B_MAKE_TOY_KD (the binary), M8B_TEACHER_GGUF
and M8B_TOKENIZER. Without them the module is skipped with a message naming them; under CI=true it
fails instead.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from common import required_env
from data import dataset
from data.remote import fake_openai, local_server

ENV = ("M8B_MAKE_TOY_KD", "M8B_TEACHER_GGUF", "M8B_TOKENIZER")
N = 12  # prompts per dataset
FLAGS = ["--seed=1", "--heldout_fraction=0.2", "--topk=8", "--noise_fraction=0.5"]
FACTOR = 4
ROUNDING = 1e-6


def _subjects() -> dict[str, str]:
    return required_env.require(ENV, "(tests/BUILD.bazel passes them to //tests:teacher_server)")


KEY = "sk-local-3c1d5e7f9a-NEVER-WRITTEN"


class Front:
    """The proxy's behaviour: pass requests on to `upstream` (a LlamaServer), after `delay` seconds;
    mode "429" answers the first two requests 429 with Retry-After: 0; mode "strip" removes every
    choice's logprobs from the response; mode "key" answers 401 unless the request carries KEY."""

    def __init__(self, upstream: local_server.LlamaServer):
        self.upstream, self.mode, self.delay, self.refused = upstream, "pass", 0.0, 0

    def __call__(self, seen: fake_openai.Seen):
        if self.mode == "key" and seen.headers.get("Authorization") != f"Bearer {KEY}":
            return fake_openai.json_response({"error": "a key is needed"}, 401)
        if self.mode == "429" and self.refused < 2:
            self.refused += 1
            return fake_openai.json_response({"error": "rate limited"}, 429, {"Retry-After": "0"})
        time.sleep(self.delay)
        headers = {k: v for k, v in seen.headers.items() if k.lower() == "content-type"}
        request = urllib.request.Request(
            self.upstream.url.removesuffix("/v1") + seen.path,
            data=seen.body or None,
            headers=headers,
            method=seen.method,
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read()
        except (urllib.error.URLError, OSError) as error:
            return fake_openai.json_response({"error": f"upstream: {error}"}, 502)
        if self.mode == "strip" and status == 200 and seen.method == "POST":
            doc = json.loads(body)
            for choice in doc.get("choices", []):
                choice.pop("logprobs", None)
            body = json.dumps(doc).encode()
        return status, {"Content-Type": "application/json"}, body


@pytest.fixture(scope="module")
def subjects():
    return _subjects()


@pytest.fixture(scope="module")
def rig(subjects, tmp_path_factory):
    """(server, front, proxy): the server is always stopped at the end, whatever happened."""
    logs = tmp_path_factory.mktemp("server")
    server = local_server.LlamaServer(
        subjects["M8B_TEACHER_GGUF"], str(logs / "llama_cpp_server.log"), "wide"
    )
    front = Front(server)
    try:
        server.start()
        with fake_openai.Server(front) as proxy:
            yield server, front, proxy
    finally:
        server.stop(signal.SIGKILL)


def make_toy_kd(subjects, out: str, teacher: str, *flags: str, n: int = N, env=None, timeout: float = 300):
    command = [
        subjects["M8B_MAKE_TOY_KD"],
        f"--teacher={teacher}",
        f"--out={out}",
        f"--tokenizer={subjects['M8B_TOKENIZER']}",
        f"--n={n}",
        *FLAGS,
        *flags,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


@pytest.fixture(scope="module")
def reference(subjects, rig, tmp_path_factory):
    """The uninterrupted server run and the in-process GGUF run of the same N prompts."""
    _, front, proxy = rig
    out = tmp_path_factory.mktemp("reference")
    served, local = str(out / "served.jsonl"), str(out / "local.jsonl")
    front.mode, front.delay = "pass", 0.0
    done = make_toy_kd(subjects, served, f"openai:{proxy.url}")
    assert done.returncode == 0, done.stderr
    done = make_toy_kd(subjects, local, f"gguf:{subjects['M8B_TEACHER_GGUF']}")
    assert done.returncode == 0, done.stderr
    return served, local


def measured_floor(gguf: str, records: list[dataset.Record]) -> float:
    """The largest float32-vs-float64 log-softmax difference and batch-vs-stored difference over
    every list entry of `records` (module docstring)."""
    import llama_cpp
    from llama_cpp import Llama

    llama = Llama(
        model_path=gguf,
        n_ctx=512,
        n_batch=1,
        n_ubatch=1,
        logits_all=True,
        n_threads=1,
        n_threads_batch=1,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    floor = 0.0
    for record in records:
        llama.reset()
        tokens = [1, *record.prompt_ids, *record.completion_ids[:-1]]
        llama.eval(tokens)
        rows = llama.scores[len(record.prompt_ids) : len(tokens)]
        as32 = Llama.logits_to_logprobs(rows)  # float32, as the server computes them
        scores = rows.astype(np.float64)
        peak = scores.max(axis=1, keepdims=True)
        as64 = scores - peak - np.log(np.exp(scores - peak).sum(axis=1, keepdims=True))
        for position, (ids, written) in enumerate(zip(record.topk_ids, record.topk_logprobs, strict=True)):
            floor = max(floor, float(np.abs(as32[position, ids] - as64[position, ids]).max()))
            floor = max(floor, float(np.abs(as64[position, ids] - np.array(written)).max()))
    llama.close()
    return floor


def test_the_server_writes_the_in_process_teachers_replies_and_lists_within_the_measured_bound(
    subjects, reference
):
    served_path, local_path = reference
    served, local = dataset.read_dataset(served_path), dataset.read_dataset(local_path)
    header_s, header_l = dict(served.header), dict(local.header)
    assert header_s.pop("teacher")["kind"] == "openai" and header_l.pop("teacher")["kind"] == "gguf"
    assert header_s == header_l
    floor = measured_floor(subjects["M8B_TEACHER_GGUF"], local.records)
    assert floor > 0  # else the bound would be the rounding alone: the float32 path must show
    bound = FACTOR * floor + ROUNDING
    worst = 0.0
    for a, b in zip(served.records, local.records, strict=True):
        assert (a.id, a.question, a.completion_ids) == (b.id, b.question, b.completion_ids)
        for position in range(len(a.completion_ids)):
            row_a = dict(zip(a.topk_ids[position], a.topk_logprobs[position], strict=True))
            row_b = dict(zip(b.topk_ids[position], b.topk_logprobs[position], strict=True))
            for i in row_a.keys() & row_b.keys():
                worst = max(worst, abs(row_a[i] - row_b[i]))
            # An id on one list only sits at the other's k-th place, within the bound of it.
            for row, other in ((row_a, row_b), (row_b, row_a)):
                for i in row.keys() - other.keys():
                    assert row[i] <= min(other.values()) + bound, (a.id, position, i)
            assert abs(a.topk_tail[position] - b.topk_tail[position]) <= len(row_a) * bound
    print(f"\nlog-probabilities: worst difference {worst:.2e}, bound {bound:.2e}", end=" ")
    print(f"= {FACTOR} x measured floor {floor:.2e} + {ROUNDING:g} (rounding)")
    assert worst <= bound


def test_a_rerun_sends_no_request_and_writes_the_same_bytes(subjects, rig, reference, tmp_path):
    server, front, proxy = rig
    served_path, _ = reference
    again = str(tmp_path / "again.jsonl")
    before = len(proxy.seen)
    server.stop()  # nothing may be asked: every response is in the cache
    try:
        done = make_toy_kd(subjects, again, f"openai:{proxy.url}", f"--cache_dir={served_path}.cache")
    finally:
        server.start()
    assert done.returncode == 0, done.stderr
    assert len(proxy.seen) == before
    assert read_bytes(again) == read_bytes(served_path)
    assert "0 requests sent" in done.stderr


def test_a_server_killed_mid_run_then_restarted_gives_the_uninterrupted_bytes(
    subjects, rig, reference, tmp_path
):
    server, front, proxy = rig
    served_path, _ = reference
    out, cache = str(tmp_path / "resumed.jsonl"), tmp_path / "cache"
    front.delay = 0.1  # slow enough to be caught mid-run
    command = [
        subjects["M8B_MAKE_TOY_KD"],
        f"--teacher=openai:{proxy.url}",
        f"--out={out}",
        f"--tokenizer={subjects['M8B_TOKENIZER']}",
        f"--n={N}",
        f"--cache_dir={cache}",
        "--concurrency=1",
        "--max_retries=1",
        *FLAGS,
    ]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            if cache.is_dir() and len(os.listdir(cache)) >= 6:
                break
            time.sleep(0.05)
        server.stop(signal.SIGKILL)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        front.delay = 0.0
        server.start()
    kept = len(os.listdir(cache))
    assert run.returncode == 2, stderr
    assert f"{proxy.url}/" in stderr and not os.path.exists(out)
    assert 6 <= kept < 2 * N + 1  # stopped part of the way
    done = make_toy_kd(subjects, out, f"openai:{proxy.url}", f"--cache_dir={cache}")
    assert done.returncode == 0, done.stderr
    assert read_bytes(out) == read_bytes(served_path)
    assert f"{kept} responses from the cache" in done.stderr


def test_two_429s_are_retried_and_logged(subjects, rig, tmp_path):
    _, front, proxy = rig
    front.mode, front.refused = "429", 0
    try:
        done = make_toy_kd(
            subjects, str(tmp_path / "kd.jsonl"), f"openai:{proxy.url}", "--concurrency=1", n=4
        )
    finally:
        front.mode = "pass"
    assert done.returncode == 0, done.stderr
    assert front.refused == 2
    retries = [line for line in done.stderr.splitlines() if "retry " in line and "HTTP 429" in line]
    assert len(retries) == 2, done.stderr
    assert "waiting 0.0 s" in retries[0]
    assert dataset.read_dataset(str(tmp_path / "kd.jsonl")).header["num_records"] == 4


def test_responses_without_logprobs_are_exit_2_naming_the_prompt(subjects, rig, tmp_path):
    _, front, proxy = rig
    out = str(tmp_path / "kd.jsonl")
    front.mode = "strip"
    try:
        done = make_toy_kd(subjects, out, f"openai:{proxy.url}", "--concurrency=1", n=5)
    finally:
        front.mode = "pass"
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {proxy.url}: record ") and "no log-probabilities" in last, last
    assert "--kd=sequence" in last and not os.path.exists(out)


def test_an_endpoint_that_is_down_is_exit_2_naming_the_url(subjects, tmp_path):
    url = f"http://127.0.0.1:{local_server.free_port()}/v1"
    out = str(tmp_path / "kd.jsonl")
    done = make_toy_kd(subjects, out, f"openai:{url}", "--max_retries=1", n=5)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {url}/models: cannot connect (connection refused)"), last
    assert not os.path.exists(out) and not os.path.exists(out + ".cache")


def test_the_api_key_is_sent_and_written_nowhere(subjects, rig, tmp_path):
    _, front, proxy = rig
    out = str(tmp_path / "kd.jsonl")
    before = len(proxy.seen)
    front.mode = "key"
    try:
        refused = make_toy_kd(subjects, out, f"openai:{proxy.url}", n=5)
        env = dict(os.environ, TEACHER_KEY=KEY)
        done = make_toy_kd(subjects, out, f"openai:{proxy.url}", "--api_key_env=TEACHER_KEY", n=5, env=env)
    finally:
        front.mode = "pass"
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "--api_key_env" in refused.stderr
    assert done.returncode == 0, done.stderr
    keyed = proxy.seen[before + 1 :]
    assert keyed and all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in keyed)
    written = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    assert out in written and len(written) > 2  # the dataset and the cached responses
    for path in written:
        assert KEY.encode() not in read_bytes(path), path
    assert KEY not in refused.stdout + refused.stderr + done.stdout + done.stderr
