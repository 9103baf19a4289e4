"""`ask` on the shipped artifacts: greedy replies to out-of-distribution questions are canonical;
`ask --constrain`: every reply is canonical, even where the model's own
would not be; `--print_grammar`'s GBNF does the same inside llama.cpp's own sampler.

To make the unconstrained model leave the 20 answers, the questions are asked at temperature 5
over the whole vocabulary (--top_k=0 --top_p=1): most unconstrained replies are then off-script,
and every constrained one must still be canonical (data/teacher.canonical_reply, checked on the
printed text). Each set of questions is one `ask --batch` run: the model loads once.

Inputs from the environment (pipeline/BUILD.bazel): M8B_ASK (the launcher), M8B_TORCHSCRIPT_DECODER,
M8B_AOTI_DECODER, M8B_CONTRACT, M8B_GGUF, M8B_TOKENIZER, M8B_METADATA. Without them the tests are
skipped with a message, and fail under CI=true.
"""

import os
import subprocess

import pytest

from pipeline import shipped_env

ENV = (
    "M8B_ASK",
    "M8B_TORCHSCRIPT_DECODER",
    "M8B_AOTI_DECODER",
    "M8B_CONTRACT",
    "M8B_GGUF",
    "M8B_TOKENIZER",
    "M8B_METADATA",
)
QUESTIONS = [
    "Will it rain tomorrow?",
    "why is the sky blue",
    "¿Voy a ganar?",
    "🎂🎂 party??",
    "Tell me a joke.",
]
HOT = ["--temperature=5", "--top_k=0", "--top_p=1"]


@pytest.fixture(scope="module")
def env():
    env = shipped_env.require(ENV)
    return {name: os.path.abspath(path) for name, path in env.items()}


def _ask(env, *args, questions=None) -> str:
    """ask's stdout; with `questions`, one --batch run over them (a reply per line)."""
    flags = [
        f"--torchscript_decoder={env['M8B_TORCHSCRIPT_DECODER']}",
        f"--aoti_decoder={env['M8B_AOTI_DECODER']}",
        f"--contract={env['M8B_CONTRACT']}",
        f"--gguf={env['M8B_GGUF']}",
        f"--tokenizer={env['M8B_TOKENIZER']}",
        f"--metadata={env['M8B_METADATA']}",
    ]
    if questions is not None:
        flags.append("--batch")
    stdin = None if questions is None else "".join(q + "\n" for q in questions)
    done = subprocess.run(
        [env["M8B_ASK"], *flags, *args], input=stdin, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _replies(env, questions, *args) -> list[str]:
    """One --batch run of ask: its reply to each question, in order."""
    lines = _ask(env, *args, questions=questions).splitlines()
    assert len(lines) == len(questions), lines
    return lines


def _canonical(printed: str) -> bool:
    from data import teacher

    return teacher.canonical_answer(" " + printed.rstrip("\n")) is not None


@pytest.mark.parametrize("backend", ["torchscript", "gguf"])
def test_constrain_gives_canonical_replies_where_the_model_does_not(env, backend):
    common = [f"--backend={backend}", "--seed=0", *HOT]  # each question its own draws (ask's seed rule)
    free = _replies(env, QUESTIONS, *common)
    constrained = _replies(env, QUESTIONS, *common, "--constrain")
    print(f"\n{backend} at temperature 5: free {free}\nconstrained {constrained}")
    assert sum(map(_canonical, free)) < len(QUESTIONS) // 2  # the test can tell the difference
    assert all(map(_canonical, constrained)), constrained


def test_ask_greedy_answers_ood_questions_canonically(env):
    """Issue 17's check, as a user runs it: `ask --greedy`, without --constrain, on one question of
    each style of the out-of-distribution set (ood/questions.tsv), in one --batch run (each reply is
    the one the question gets alone: pipeline/ask_test.py)."""
    from ood import questions

    picked = {}
    for q in questions.load():
        picked.setdefault(q.style, q.text)
    asked = list(picked.values())
    printed = dict(zip(asked, _replies(env, asked, "--greedy"), strict=True))
    print(f"\nask --greedy: {printed}")
    assert all(map(_canonical, printed.values())), printed


def test_the_help_says_it_is_a_layer_on_top(env):
    done = subprocess.run([env["M8B_ASK"], "--help"], capture_output=True, text=True, timeout=300)
    text = " ".join(done.stdout.split())
    assert "--[no]constrain" in text and "guarantee layered on top of the model" in text
    assert "measure the model without it" in text


def test_the_grammar_constrains_llama_cpp_itself(env):
    """--print_grammar's GBNF, given to llama.cpp's own sampler (not our mask), at temperature 5."""
    import llama_cpp

    from data import teacher
    from verify.gguf_files import gguf_check

    grammar = _ask(env, "--print_grammar")
    assert grammar.count(" | ") == len(teacher.ANSWERS) - 1
    llama = gguf_check.load(env["M8B_GGUF"])
    replies = []
    for seed, question in enumerate(QUESTIONS):
        out = llama.create_completion(
            f"Q: {question}\nA:",
            max_tokens=32,
            temperature=5.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            seed=seed,
            grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False),
        )
        replies.append(out["choices"][0]["text"])
    print(f"\nllama.cpp with the grammar: {replies}")
    assert all(teacher.canonical_answer(r) is not None for r in replies), replies
