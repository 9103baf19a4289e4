"""The trained student meets its behaviour targets, checked on the real checkpoint.

Targets, on the first 1000 held-out questions of the dataset the checkpoint was trained on
(metrics and bounds as defined in training/evaluate.py, quality_failures):
  - every greedy reply is a canonical Magic 8 Ball reply;
  - per question kind, total variation between the student's and the teacher's average answer
    distributions is at most 0.1;
  - per-question mean KL(teacher || student) over the 20 answers is at most 1/10 of the kind-only
    baseline's (every question given its kind's average teacher distribution). A student that
    ignores everything but the question's kind matches the per-kind averages (TV near 0) and
    fails this; test_a_kind_only_student_fails shows it does.

Inputs (all four required), from flags when run as a program or from the environment:

    Bazel:   py_test(name = "student_quality_test", srcs = ["student_quality_test.py"],
                     main = "student_quality_test.py",
                     args = ["--weights=$(rootpath <weights>)", "--metadata=$(rootpath <metadata>)",
                             "--dataset=$(rootpath <kd.jsonl>)", "--tokenizer=$(rootpath <tokenizer.json>)"],
                     data = [...those four...], deps = [":evaluate", ":checkpoint", "//data:dataset", ...])
    By hand: M8B_WEIGHTS=student.safetensors M8B_METADATA=student.json M8B_DATASET=kd.jsonl \\
             M8B_TOKENIZER=tokenizer.json python -m pytest -s training/student_quality_test.py
             (or python training/student_quality_test.py --weights=... --metadata=... ...)

Under plain pytest without the variables the tests are skipped (they need a trained checkpoint);
run as a program, missing inputs are an error (exit 2).
"""

import argparse
import os
import sys

import pytest

ENV = {
    "weights": "M8B_WEIGHTS",
    "metadata": "M8B_METADATA",
    "dataset": "M8B_DATASET",
    "tokenizer": "M8B_TOKENIZER",
}
QUESTIONS = 1000


@pytest.fixture(scope="module")
def metrics():
    import torch

    from common import required_env
    from data import dataset
    from data.tokenizer import Tokenizer
    from training import checkpoint, evaluate

    env = required_env.require(ENV.values(), "to the trained checkpoint's files (see the module docstring)")
    paths = {name: env[var] for name, var in ENV.items()}
    torch.set_num_threads(int(os.environ.get("M8B_THREADS", "2")))
    tokenizer = Tokenizer.load(paths["tokenizer"])
    model, metadata = checkpoint.load(paths["weights"], paths["metadata"], tokenizer.vocab_size)
    assert metadata["tokenizer_sha256"] == tokenizer.digest, "checkpoint and tokenizer do not belong together"
    assert metadata["dataset_sha256"] == checkpoint.sha256_file(paths["dataset"]), (
        "the checkpoint was trained on another dataset; evaluate it on its own held-out split"
    )
    heldout = dataset.read_dataset(paths["dataset"]).split("heldout")
    assert len(heldout) >= QUESTIONS, f"{paths['dataset']}: {len(heldout)} held-out records, need {QUESTIONS}"
    result = evaluate.evaluate(model, tokenizer, heldout[:QUESTIONS])
    print("\n" + evaluate.format_report(result))
    return result


def test_the_student_passes_every_quality_gate(metrics):
    assert metrics["questions"] == QUESTIONS
    from training import evaluate

    assert not evaluate.quality_failures(metrics), metrics["non_canonical"]


def test_a_kind_only_student_fails(metrics):
    """The same gates on a student that answers each question with its kind's average distribution:
    its per-kind averages match the teacher's (TV 0), so only the KL-vs-baseline gate can fail it."""
    import numpy as np

    from training import evaluate

    kinds = metrics["kinds"]
    kind_only = np.stack([np.asarray(metrics["per_kind"][kind]["teacher"]) for kind in kinds])
    trivial = dict(metrics, **evaluate.distribution_metrics(kind_only, metrics["teacher_rows"], kinds))
    failures = evaluate.quality_failures(trivial)
    print("kind-only student:", failures)
    assert trivial["max_tv"] < 1e-9
    assert any("baseline" in line for line in failures), failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, var in ENV.items():
        parser.add_argument(f"--{name}", default=os.environ.get(var), help=f"or ${var}")
    args, pytest_args = parser.parse_known_args(argv)
    missing = [f"--{name}" for name in ENV if not getattr(args, name)]
    if missing:
        print(f"error: {', '.join(missing)} required (or set {', '.join(ENV.values())})", file=sys.stderr)
        return 2
    for name, var in ENV.items():
        os.environ[var] = os.path.abspath(getattr(args, name))
    options = ["-p", "no:cacheprovider", "-q", "-s", "--no-header", "-rs"]
    if "XML_OUTPUT_FILE" in os.environ:
        options.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if "TEST_TMPDIR" in os.environ:
        options.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
    return pytest.main([*options, *pytest_args, os.path.abspath(__file__)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
