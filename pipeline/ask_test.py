"""`ask` answers through its decoders what eager greedy decoding answers.

Runs the ask binary as a user does, with the shipped artifacts, for held-out questions (and with
sampling, one seed), and compares each printed reply with the eager checkpoint decoding the same
question through its own KV cache (training/decode.py, CachedSteps), with the same sampler and
draws: through the default backend (the AOTInductor decoder, magic-8-ball.decode.pt2) and through
--backend=torchscript. Where the package cannot run (a contract recording another torch or vector
ISA stands in for another machine), ask warns once and answers through the TorchScript decoder. A
package whose shared object is not the one the contract pins exits 2 and nothing in it runs. A
question that leaves no room for a reply exits 2 and prints nothing. `ask --batch` (questions on
standard input, a reply per line) gives each question the reply it gets alone, and a bad line exits
2 naming it before any reply is printed.

Inputs from the environment (pipeline/BUILD.bazel sets them): M8B_ASK (the binary), M8B_WEIGHTS,
M8B_METADATA, M8B_DATASET, M8B_TOKENIZER, M8B_DECODER, M8B_AOTI_DECODER, M8B_CONTRACT. Without them
the tests are skipped with a message, and fail under CI=true.
"""

import json
import os
import subprocess

import pytest

from pipeline import shipped_env

ENV = (
    "M8B_ASK",
    "M8B_WEIGHTS",
    "M8B_METADATA",
    "M8B_DATASET",
    "M8B_TOKENIZER",
    "M8B_DECODER",
    "M8B_AOTI_DECODER",
    "M8B_CONTRACT",
)
QUESTIONS = 4


@pytest.fixture(scope="module")
def shipped():
    env = shipped_env.require(ENV)
    from data import dataset

    tokenizer, model = shipped_env.student(env)
    heldout = sorted(dataset.read_dataset(env["M8B_DATASET"]).split("heldout"), key=lambda r: r.id)
    return env, tokenizer, model, [r.question for r in heldout[:QUESTIONS]]


def _ask(env, question: str | None, *flags: str, stdin=None, **paths: str) -> subprocess.CompletedProcess:
    """ask with the shipped files (`paths` replaces some: aoti_decoder=..., contract=...); the
    default backend unless `flags` names one; `question` on the command line (None: none there),
    `stdin` on standard input."""
    files = {
        "torchscript_decoder": env["M8B_DECODER"],
        "aoti_decoder": env["M8B_AOTI_DECODER"],
        "contract": env["M8B_CONTRACT"],
        "tokenizer": env["M8B_TOKENIZER"],
        "metadata": env["M8B_METADATA"],
        **paths,
    }
    command = [env["M8B_ASK"], *(f"--{flag}={path}" for flag, path in files.items()), *flags]
    if question is not None:
        command += ["--", question]
    child_env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=300, env=child_env)


def _eager(tokenizer, model, question: str, sampler=None, seed: int = 0) -> str:
    from data import prompt
    from training import decode

    new = decode.generate(
        decode.CachedSteps(model),
        prompt.build_model_input(tokenizer, question),
        tokenizer.eos_id,
        max_new_tokens=32,
        sampler=sampler,
        seed=seed,
        max_length=model.cfg.max_seq_len,
    )
    return tokenizer.decode(new).strip()


@pytest.mark.parametrize("backend", [[], ["--backend=torchscript"]], ids=["default (aoti)", "torchscript"])
def test_greedy_replies_equal_eager_greedy_decoding(shipped, backend):
    """Every held-out question in one --batch run: each reply is eager's for that question alone, so
    nothing of one question's decoding (its KV cache) leaks into the next."""
    env, tokenizer, model, questions = shipped
    result = _ask(env, None, "--greedy", "--batch", *backend, stdin="".join(q + "\n" for q in questions))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no fallback warning: the package ran
    assert result.stdout.splitlines() == [_eager(tokenizer, model, q) for q in questions]


@pytest.mark.parametrize("backend", [[], ["--backend=torchscript"]], ids=["default (aoti)", "torchscript"])
def test_sampled_replies_equal_eager_with_the_same_draws(shipped, backend):
    """One question on the command line, two in a --batch run: each question's draws follow the seed
    rule (the seed and the question's tokens), whatever else is asked in the same run."""
    from training import sampling

    env, tokenizer, model, questions = shipped
    result = _ask(env, questions[0], "--seed=3", *backend)
    assert result.returncode == 0, result.stderr
    expected = [_eager(tokenizer, model, q, sampling.DEFAULT, seed=3) for q in questions[:2]]
    assert result.stdout.strip() == expected[0]
    batch = _ask(env, None, "--seed=3", "--batch", *backend, stdin=f"{questions[1]}\r\n{questions[0]}")
    assert batch.returncode == 0, batch.stderr
    assert batch.stdout.splitlines() == expected[::-1]


@pytest.mark.parametrize(
    "stdin, where, message",
    [
        ("Will it rain?\n\nShall I go?\n", "standard input line 2: ", "is empty"),
        ("Will it rain?\nShall I\tgo?\n", "standard input line 2: ", "U+0009"),
        ("Will it rain?\n" + "Will it rain? " * 400 + "\n", "standard input line 2: ", "fit the model's"),
        ("Will it rain?\n" + "x" * ((1 << 16) + 1), "standard input line 2: ", "longer than 65536 bytes"),
        ("", "no question", "standard input is empty"),
    ],
    ids=["empty line", "control character", "too long for the context", "huge line", "nothing"],
)
def test_a_bad_batch_line_exits_2_naming_it_before_any_reply(shipped, stdin, where, message):
    env = shipped[0]
    result = _ask(env, None, "--greedy", "--batch", stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {where}") and message in result.stderr, result.stderr


def test_batch_takes_its_questions_from_standard_input_only(shipped):
    env = shipped[0]
    result = _ask(env, "Will it rain?", "--greedy", "--batch", stdin="Shall I go?\n")
    assert result.returncode == 2 and result.stdout == ""
    assert "--batch reads the questions from standard input" in result.stderr


@pytest.mark.parametrize("backend", [[], ["--backend=torchscript"]], ids=["default (aoti)", "torchscript"])
def test_a_question_longer_than_the_context_exits_2(shipped, backend):
    env, _, model, _ = shipped
    result = _ask(env, "Will it rain? " * model.cfg.max_seq_len, "--greedy", *backend)
    assert result.returncode == 2
    assert result.stdout == ""
    # The room kept for a reply is the longest canonical one (data/canonical_trie.py).
    assert "question:" in result.stderr and "fit the model's" in result.stderr
    assert f"{model.cfg.max_seq_len}-token context" in result.stderr


def _contract_with(env, tmp_path, **build) -> str:
    """The shipped contract, its record of the package's compile changed: as another machine's
    torch or CPU would see the package."""
    with open(env["M8B_CONTRACT"], encoding="utf-8") as handle:
        contract = json.load(handle)
    contract["compiled"]["aoti_decoder"].update(build)
    path = str(tmp_path / "contract.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(contract, handle)
    return path


@pytest.mark.parametrize(
    "build, reason",
    [
        ({"torch": "2.99.0+cpu"}, "compiled against torch 2.99.0+cpu"),
        ({"isa": "avx512_bf16"}, "compiled for"),
    ],
    ids=["another torch", "another vector ISA"],
)
def test_where_the_package_cannot_run_ask_warns_once_and_answers_through_torchscript(
    shipped, tmp_path, build, reason
):
    env, tokenizer, model, questions = shipped
    result = _ask(env, questions[1], "--greedy", contract=_contract_with(env, tmp_path, **build))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: the AOTInductor decoder cannot run here")
    assert reason in lines[0] and "TorchScript decoder" in lines[0]
    assert result.stdout.strip() == _eager(tokenizer, model, questions[1])


def test_a_package_with_another_shared_object_exits_2_and_nothing_in_it_runs(shipped, tmp_path):
    from conversion import pt2_testing

    env = shipped[0]
    marker = tmp_path / "dlopened"
    package = pt2_testing.write_zip(
        str(tmp_path / "crafted.decode.pt2"),
        pt2_testing.package_records(pt2_testing.hostile_so(str(tmp_path))),
    )
    os.environ[pt2_testing.MARKER] = str(marker)
    try:
        result = _ask(env, "Will it rain?", "--greedy", aoti_decoder=package)
    finally:
        del os.environ[pt2_testing.MARKER]
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {package}: its shared object has sha256")
    assert "but the contract pins" in lines[0]
    assert not marker.exists()
