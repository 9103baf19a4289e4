"""The pipeline tests' inputs: artifact paths that pipeline/BUILD.bazel passes in environment variables.

A test run without them (plain pytest outside Bazel) has no subject: it is skipped with a message
naming the variables, and under CI=true it fails, since a skip there would read as a pass.
"""

from common import required_env


def require(names) -> dict[str, str]:
    """{name: value} of the environment variables `names`; skip (fail under CI=true) if any is unset."""
    return required_env.require(names, "to the pipeline's artifacts (see pipeline/shipped_env.py)")


def student(env: dict[str, str]) -> tuple:
    """(tokenizer, eval-mode student) from env's M8B_TOKENIZER, M8B_WEIGHTS and M8B_METADATA, with torch
    on one thread as the artifacts are verified. torch is imported here, after require() passed."""
    import torch

    from data.tokenizer import Tokenizer
    from training import checkpoint

    torch.set_num_threads(1)
    tokenizer = Tokenizer.load(env["M8B_TOKENIZER"])
    model, _ = checkpoint.load(env["M8B_WEIGHTS"], env["M8B_METADATA"], tokenizer.vocab_size)
    return tokenizer, model.eval()
