"""A GGUF teacher made here: a small student trained for a few seconds on the very questions the
dataset asks (so its greedy replies end with eos), exported by conversion/gguf_export.py, then
asked through make_toy_kd --teacher=gguf:... and through GGUFTeacher directly, and held to the eager
student (training/model.py) it was exported from."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import digest
from common.errors import InputError
from conversion import gguf_export
from data import dataset, generate
from data import tokenizer as tk
from data.teachers import gguf_file, gguf_teacher, source, teacher_dataset
from training import decode, sampling
from training.model import ModelConfig, Student, init_weights

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
BINARY = os.path.join(REPO_ROOT, "data", "make_toy_kd.py")
N, SEED, HELDOUT, TOPK = 16, 0, 0.25, 8
DATASET_FLAGS = (f"--n={N}", f"--seed={SEED}", f"--heldout_fraction={HELDOUT}", f"--topk={TOPK}")
FACTOR = 4  # the project's factor over a measured floor (docs/architecture.md, "Gates")


def run(*flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, BINARY, *flags], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def _train(tok: tk.Tokenizer) -> Student:
    """A 2-layer student taught the rules teacher's replies to the N questions by cross-entropy."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    _, _, records = generate.generate(N, SEED, HELDOUT, TOPK, tok)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=64, max_seq_len=128)
    model = Student(cfg)
    init_weights(model, seed=0)
    rows = [[tok.bos_id, *r.prompt_ids, *r.completion_ids] for r in records]
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_id)
    targets = torch.zeros(ids.shape, dtype=torch.bool)
    for i, (row, record) in enumerate(zip(rows, records, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        targets[i, len(row) - len(record.completion_ids) : len(row)] = True
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits[targets[:, 1:]], ids[:, 1:][targets[:, 1:]])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _swapped(tok: tk.Tokenizer, used: set[int]) -> tuple[tk.Tokenizer, int]:
    """The tokenizer with two normal pieces that none of `used` touches swapped, scores and all: the
    same texts encode to the same ids except those two. Returns it and the lower swapped id."""
    a, b = [i for i in range(tk.FIRST_NORMAL_ID, tok.vocab_size) if i not in used][-2:]
    pieces, scores = list(tok.pieces), list(tok.scores)
    pieces[a], pieces[b] = pieces[b], pieces[a]
    scores[a], scores[b] = scores[b], scores[a]
    return tk.Tokenizer(pieces, scores, tok.token_types), a


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher")
    tok = generate.train_tokenizer()
    model = _train(tok)
    questions = generate.questions(N, SEED, HELDOUT)
    prompts = teacher_dataset.prompts(questions, tok)
    replies = decode.greedy_batch(model, [[tok.bos_id, *p.prompt_ids] for p in prompts], tok.eos_id, 32)
    assert all(reply[-1] == tok.eos_id for reply in replies)  # the test needs replies that end
    paths = {"tokenizer": str(directory / "tokenizer.json"), "gguf": str(directory / "teacher.gguf")}
    tok.save(paths["tokenizer"])
    gguf_export.export(model, tok, paths["gguf"])
    used = {i for p in prompts for i in p.prompt_ids} | {i for reply in replies for i in reply}
    other, swapped_id = _swapped(tok, used)
    paths["other"] = str(directory / "other.gguf")
    gguf_export.export(model, other, paths["other"])
    return {
        "tok": tok,
        "model": model,
        "prompts": prompts,
        "replies": replies,
        "paths": paths,
        "other": other,
        "swapped_id": swapped_id,
    }


def _logprob_errors(model: Student, records, dtype: torch.dtype) -> np.ndarray:
    """|written top-k log-probability - eager float64's| per entry, and the same for eager in
    `dtype` (its own log-softmax), as (written errors, dtype errors)."""
    exact = Student(model.cfg).to(torch.float64)
    exact.load_state_dict(model.state_dict())
    exact.eval()
    written, own = [], []
    with torch.no_grad():
        for record in records:
            ids = torch.tensor([[tk.BOS_ID, *record.prompt_ids, *record.completion_ids[:-1]]])
            start = len(record.prompt_ids)
            reference = torch.log_softmax(exact(ids)[0, start:], -1).numpy()
            low = torch.log_softmax(model.to(dtype)(ids)[0, start:].double(), -1).numpy()
            for position, (top, logprobs) in enumerate(
                zip(record.topk_ids, record.topk_logprobs, strict=True)
            ):
                written += list(np.abs(np.array(logprobs) - reference[position, top]))
                own += list(np.abs(low[position, top] - reference[position, top]))
    return np.array(written), np.array(own)


def test_a_gguf_teacher_writes_the_eager_students_replies_and_log_probabilities(teacher, tmp_path):
    paths = teacher["paths"]
    outputs = []
    for name in ("a", "b"):
        out = str(tmp_path / f"{name}.jsonl")
        result = run(
            f"--teacher=gguf:{paths['gguf']}",
            f"--tokenizer={paths['tokenizer']}",
            f"--out={out}",
            *DATASET_FLAGS,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(open(out, "rb").read())
    assert outputs[0] == outputs[1]  # same flags, same bytes

    data = dataset.read_dataset(str(tmp_path / "a.jsonl"))
    header = data.header
    assert header["teacher"] == {
        "kind": "gguf",
        "model": "teacher.gguf",
        "sha256": digest.sha256_file(paths["gguf"]),
        "endpoint": None,
        "server_model": gguf_export.MODEL_NAME,
        "api": None,
    }
    assert (header["version"], header["kd"], header["soft_targets"], header["topk"]) == (
        2,
        "logits",
        True,
        TOPK,
    )
    assert header["sampling"] == {"mode": "greedy", "max_tokens": 32}
    # The same questions as the rules dataset of these flags, and the eager student's greedy replies.
    questions = generate.questions(N, SEED, HELDOUT)
    assert [(r.id, r.split, r.kind, r.question) for r in data.records] == [
        (q.id, q.split, q.kind, q.question) for q in questions
    ]
    assert [r.completion_ids for r in data.records] == teacher["replies"]
    assert all(len(row) == TOPK for r in data.records for row in r.topk_ids)
    # Each list: the teacher's top tokens, the chosen (greedy) token first.
    assert all(r.topk_ids[i][0] == r.completion_ids[i] for r in data.records for i in range(len(r.topk_ids)))

    # The bound: eager float32 against eager float64 on the same positions and ids is the floor of
    # computing this model in float32; llama.cpp computes in float32 too (f32 weights, f32 KV
    # cache) in another order. Written values are rounded to 6 decimals: + 5e-7.
    written, floor = _logprob_errors(teacher["model"], data.records, torch.float32)
    bound = FACTOR * float(floor.max()) + 5e-7
    assert float(written.max()) <= bound, (float(written.max()), float(floor.max()))
    assert bound < 1e-4  # a few float32 roundings, not a part in ten thousand


def test_the_tokenizer_trained_in_the_run_is_the_same(teacher, tmp_path):
    """A pipeline action with the teacher GGUF as its only input: --tokenizer_out, as the rules run."""
    out, tok_out = str(tmp_path / "kd.jsonl"), str(tmp_path / "tokenizer.json")
    result = run(
        f"--teacher=gguf:{teacher['paths']['gguf']}",
        f"--out={out}",
        f"--tokenizer_out={tok_out}",
        *DATASET_FLAGS,
    )
    assert result.returncode == 0, result.stderr
    assert open(tok_out, "rb").read() == teacher["tok"].to_bytes()
    data = dataset.read_dataset(out)
    assert [r.completion_ids for r in data.records] == teacher["replies"]
    assert not result.stderr.strip(), result.stderr  # a pipeline stage prints nothing on success
    again = run(
        f"--teacher=gguf:{teacher['paths']['gguf']}",
        f"--out={tmp_path / 'again.jsonl'}",
        f"--tokenizer_out={tmp_path / 'again.tokenizer.json'}",
        *DATASET_FLAGS,
        "--verbosity=0",
    )
    assert again.returncode == 0 and "records/s" in again.stderr, again.stderr  # its log, when asked


def test_another_vocabulary_is_refused_naming_both(teacher, tmp_path):
    other, index, tok = teacher["other"], teacher["swapped_id"], teacher["tok"]
    out = str(tmp_path / "kd.jsonl")
    path = teacher["paths"]["other"]
    result = run(
        f"--teacher=gguf:{path}",
        f"--tokenizer={teacher['paths']['tokenizer']}",
        f"--out={out}",
        *DATASET_FLAGS,
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(
        f"error: {path}: the teacher's vocabulary (512 tokens) is not the student tokenizer"
    )
    assert f"sha256 {tok.digest}, 512 tokens" in line
    assert f"id {index} is {other.pieces[index]!r} (normal) in the teacher and {tok.pieces[index]!r}" in line
    assert "--kd=sequence" in line
    assert os.listdir(tmp_path) == []


def test_sequence_works_across_vocabularies_with_empty_lists(teacher, tmp_path):
    out = str(tmp_path / "kd.jsonl")
    path = teacher["paths"]["other"]
    result = run(
        f"--teacher=gguf:{path}",
        "--kd=sequence",
        f"--tokenizer={teacher['paths']['tokenizer']}",
        f"--out={out}",
        *DATASET_FLAGS,
    )
    assert result.returncode == 0, result.stderr
    data = dataset.read_dataset(out)
    assert (data.header["kd"], data.header["soft_targets"], data.header["topk"]) == ("sequence", False, 0)
    tok = teacher["tok"]
    # The reply text through the teacher's own tokenizer, re-encoded with the student's (+ eos).
    assert [r.completion for r in data.records] == [tok.decode(reply) for reply in teacher["replies"]]
    assert all(r.completion_ids == tok.encode(r.completion) + [tok.eos_id] for r in data.records)
    assert all(r.topk_ids == r.topk_logprobs == r.topk_tail == [] for r in data.records)


def test_sampled_replies_are_the_runtime_samplers_and_do_not_depend_on_order(teacher):
    settings = source.Sampling("sample", temperature=3.0, top_k=20, top_p=0.95, seed=11, max_tokens=32)
    prompts = teacher["prompts"]
    model, tok = teacher["model"], teacher["tok"]

    def replies(order):
        chosen = gguf_teacher.GGUFTeacher(
            teacher["paths"]["gguf"], model=None, sampling=settings, topk=TOPK, kd="logits", tokenizer=tok
        )
        return {p.id: r.completion_ids for p, r in zip(order, chosen.replies(order), strict=True)}

    forward, backward = replies(prompts), replies(prompts[::-1])
    assert forward == backward
    # The eager student sampled with training/sampling.py and the same draws, stopped where the
    # teacher stopped (the eager side may go on: a reply that ends is what the teacher returned).
    reference = sampling.Settings(temperature=3.0, top_k=20, top_p=0.95, min_p=0.0)
    for prompt in prompts:
        draws = np.random.default_rng([settings.seed, prompt.id]).random(settings.max_tokens)
        eager = decode.generate(
            decode.CachedSteps(model),
            [tok.bos_id, *prompt.prompt_ids],
            tok.eos_id,
            32,
            reference,
            draws=draws,
        )
        assert forward[prompt.id] == eager, prompt.id
    assert forward != {p.id: r for p, r in zip(prompts, teacher["replies"], strict=True)}  # it did sample


def test_a_reply_that_does_not_end_is_refused_naming_the_record(teacher, tmp_path):
    out = str(tmp_path / "kd.jsonl")
    result = run(
        f"--teacher=gguf:{teacher['paths']['gguf']}",
        "--max_reply_tokens=3",
        f"--tokenizer={teacher['paths']['tokenizer']}",
        f"--out={out}",
        *DATASET_FLAGS,
    )
    assert result.returncode == 2, result.stderr
    first = teacher["prompts"][0]
    assert (
        f"record 0 ({first.question!r}): the teacher's reply has not ended after --max_reply_tokens=3"
        in result.stderr
    )
    assert os.listdir(tmp_path) == []


def test_damaged_files_are_refused_before_llama_cpp_opens_them(teacher, tmp_path):
    real = open(teacher["paths"]["gguf"], "rb").read()
    # The vocabulary array's element count (after the key, its value type and element type) set to
    # 2^40: the reader must fail at the end of the file, not try to hold a trillion strings.
    count_at = real.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 8
    huge = real[:count_at] + (1 << 40).to_bytes(8, "little") + real[count_at + 8 :]
    cases = {
        "missing.gguf": None,
        "text.gguf": b"not a model at all, just some text\n",
        "short.gguf": real[:1000],
        "version.gguf": real[:4] + (9).to_bytes(4, "little") + real[8:],
        "huge.gguf": huge,
    }
    messages = {
        "missing.gguf": "teacher GGUF file not found",
        "text.gguf": "not a readable GGUF file (magic is b'not '",
        "short.gguf": "not a readable GGUF file (",
        "version.gguf": "not a readable GGUF file (GGUF version 9",
        "huge.gguf": "not a readable GGUF file (",
    }
    for name, content in cases.items():
        path = str(tmp_path / name)
        if content is not None:
            with open(path, "wb") as handle:
                handle.write(content)
        with pytest.raises(InputError) as error:
            gguf_teacher.GGUFTeacher(
                path, model=None, sampling=source.Sampling(), topk=TOPK, kd="logits", tokenizer=teacher["tok"]
            )
        assert str(error.value).startswith(f"{path}: {messages[name]}"), str(error.value)


def test_a_vocabulary_above_the_limit_is_refused_before_it_is_read(teacher, monkeypatch):
    monkeypatch.setattr(gguf_file, "MAX_VOCAB", 100)
    path = teacher["paths"]["gguf"]
    with pytest.raises(InputError, match=r"tokenizer.ggml.tokens: 512 entries; at most 100 are read"):
        gguf_file.read(path)
