"""Renders report.html from a pipeline run: loss curves, answer distributions, parity, gates.

    render_report --report=report.json --contract=contract.json --metadata=student.json \\
        --history=loss_history.jsonl --weights=student.safetensors --tokenizer=tokenizer.json \\
        --dataset=kd.jsonl --out_html=report.html [--questions=1000]

The teacher vs student answer distributions are measured here, with training/evaluate.py (the same
metrics //pipeline:student_quality_test gates), on the first --questions held-out questions. The
rest is read from the files. Same inputs -> same bytes (see verify/report/report_html.py). Bad input
(missing files, files from different runs) exits 2 with one line naming the problem.
"""

import csv
import io
import json
import time

from absl import flags, logging

from common import atomic, cli, digest, quiet
from common.errors import InputError
from data import dataset as dataset_lib
from data import teacher
from data import tokenizer as tokenizer_lib
from training import checkpoint

# torch (training/evaluate.py) and matplotlib (verify/report/report_figures.py) are imported in
# main(), after the checkpoint is checked: a bad one fails in well under a second, not after their
# seconds of imports.

flags.DEFINE_string("report", None, "report.json from //verify:verify_contracts (required).")
flags.DEFINE_string("contract", None, "contract.json the report was checked against (required).")
flags.DEFINE_string("metadata", None, "Student checkpoint metadata JSON (required).")
flags.DEFINE_string("weights", None, "Student weights (safetensors) (required).")
flags.DEFINE_string("history", None, "Loss history written by the trainer (CSV or JSON lines) (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON (required).")
flags.DEFINE_string("dataset", None, "KD dataset JSONL the student was trained on (required).")
flags.DEFINE_string("out_html", None, "Output page (required).")
flags.DEFINE_integer("questions", 1000, "Held-out questions for the answer distributions (>= 1).")
FLAGS = flags.FLAGS

_REQUIRED = ("report", "contract", "metadata", "weights", "history", "tokenizer", "dataset", "out_html")


def _read_json(path: str, flag: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"--{flag}: {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"--{flag}: {path} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise InputError(f"--{flag}: {path} must hold a JSON object")
    return value


def _number(text: str, where: str):
    try:
        return float(text) if text not in ("", None) else None
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None


def parse_history(text: str, path: str) -> list[dict]:
    """Rows of {step, loss, heldout_loss?}. The trainer writes CSV (run_toy_distill.history_csv);
    JSON lines are accepted too, so renaming the format on one side does not break the other."""
    rows = []
    if text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as error:
                    raise InputError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    else:
        rows = list(enumerate(csv.DictReader(io.StringIO(text)), 2))
    history = []
    for number, row in rows:
        where = f"{path}:{number}"
        if not isinstance(row, dict) or row.get("step") in (None, "") or row.get("loss") in (None, ""):
            raise InputError(f"{where}: a row needs step and loss")
        entry = {"step": int(_number(row["step"], where + ": step")), "loss": _number(row["loss"], where)}
        held = row.get("heldout_loss")
        entry["heldout_loss"] = None if held in (None, "") else _number(held, where + ": heldout_loss")
        history.append(entry)
    if not history:
        raise InputError(f"{path}: no loss history rows")
    return history


def _read_history(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_history(handle.read(), path)
    except FileNotFoundError:
        raise InputError(f"--history: {path} not found") from None


def _same_run(report: dict, metadata: dict, tokenizer, contract: dict) -> None:
    """The files must come from one pipeline run, or the page would describe a model it never saw."""
    if report.get("contract_sha256") != digest.sha256_file(FLAGS.contract):
        raise InputError(
            f"--contract: {FLAGS.contract} is not the contract {FLAGS.report} was checked against"
        )
    if contract.get("tokenizer_sha256") != tokenizer.digest:
        raise InputError(f"--tokenizer: {FLAGS.tokenizer} is not the tokenizer of {FLAGS.contract}")
    if metadata.get("dataset_sha256") != digest.sha256_file(FLAGS.dataset):
        raise InputError(f"--dataset: {FLAGS.dataset} is not the dataset {FLAGS.metadata} was trained on")
    weights = report.get("artifacts", {}).get("weights", {}).get("sha256")
    if weights and weights != digest.sha256_file(FLAGS.weights):
        raise InputError(f"--weights: {FLAGS.weights} is not the checkpoint {FLAGS.report} verified")


def main(argv: list[str]) -> None:
    del argv
    quiet.stage()  # prints nothing on success: common/quiet.py
    for name in _REQUIRED:
        cli.require_flag(FLAGS[name].value, name)
    if FLAGS.questions < 1:
        raise InputError(f"--questions: {FLAGS.questions}; must be at least 1")
    cli.check_output_path(FLAGS.out_html, "out_html")
    report = _read_json(FLAGS.report, "report")
    contract = _read_json(FLAGS.contract, "contract")
    tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
    checkpoint.check(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)

    import torch

    from training import evaluate
    from verify.report import report_html

    # One thread: the measured distributions (and so the page's bytes) must not depend on it.
    torch.set_num_threads(1)
    model, metadata = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
    _same_run(report, metadata, tokenizer, contract)
    history = _read_history(FLAGS.history)
    heldout = dataset_lib.read_dataset(FLAGS.dataset).split("heldout")[: FLAGS.questions]
    if not heldout:
        raise InputError(f"--dataset: {FLAGS.dataset} has no held-out records")

    began = time.monotonic()
    quality = evaluate.evaluate(model, tokenizer, heldout)
    logging.info("answer distributions of %d questions in %.1f s", len(heldout), time.monotonic() - began)
    examples = {}
    for record in heldout:
        examples.setdefault(record.kind, record.question)
    # Each answer as a canonical reply writes it, flair included (data/teacher.py).
    replies = [teacher.completion_text(a).strip() for a in range(len(teacher.ANSWERS))]
    page = report_html.page(report, contract, metadata, history, quality, replies, examples)
    atomic.write_text(FLAGS.out_html, page)
    logging.info("wrote %s (%d bytes)", FLAGS.out_html, len(page.encode()))


if __name__ == "__main__":
    cli.run(main)
