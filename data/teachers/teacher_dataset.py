"""A teacher's replies to the dataset's questions as a version-2 KD dataset (data/dataset.py).

build() puts the questions make_toy_kd's rules dataset of the same --n, --seed, --heldout_fraction
and --noise_fraction would ask (data/generate.py, questions) to any source.Teacher: it checks the
vocabulary handshake first under --kd=logits, then turns each Reply into a record and the run's
settings into the header. write() validates everything and writes the file atomically
(dataset.write_dataset), so a failure at any record leaves no file.
"""

import dataclasses

from data import dataset, generate, prompt
from data import tokenizer as tokenizer_lib
from data.teachers import source


@dataclasses.dataclass(frozen=True)
class Options:
    """The make_toy_kd flags a version-2 dataset is made from."""

    n: int
    seed: int
    heldout_fraction: float
    noise_fraction: float
    topk: int
    kd: str  # source.KD_MODES
    sampling: source.Sampling


def prompts(questions: list[generate.Question], tokenizer: tokenizer_lib.Tokenizer) -> list[source.Prompt]:
    out = []
    for question in questions:
        text = prompt.format_prompt(question.question)
        out.append(source.Prompt(question.id, question.question, text, tokenizer.encode(text)))
    return out


def header(teacher: source.Teacher, tokenizer: tokenizer_lib.Tokenizer, options: Options) -> dict:
    soft = options.kd == "logits"
    return {
        "format": dataset.FORMAT,
        "version": dataset.VERSION_2,
        "teacher": teacher.describe(),
        "sampling": options.sampling.header(),
        "kd": options.kd,
        "soft_targets": soft,
        "topk": options.topk if soft else 0,
        "tokenizer_sha256": tokenizer.digest,
        "vocab_size": tokenizer.vocab_size,
        "seed": options.seed,
        "heldout_fraction": options.heldout_fraction,
        "num_records": options.n,
        "num_heldout": round(options.n * options.heldout_fraction),
        "noise_fraction": options.noise_fraction,
    }


def build(
    teacher: source.Teacher, tokenizer: tokenizer_lib.Tokenizer, options: Options
) -> tuple[dict, list[dataset.Record]]:
    """(header, records) of the teacher's replies to every question, ids 0..n-1."""
    source.check_kd(options.kd)
    options.sampling.check()
    generate.check_options(
        options.n, options.seed, options.heldout_fraction, options.topk, options.noise_fraction
    )
    questions = generate.questions(options.n, options.seed, options.heldout_fraction, options.noise_fraction)
    asked = prompts(questions, tokenizer)
    if options.kd == "logits":
        teacher.handshake(tokenizer)
    records = []
    for question, put, reply in zip(questions, asked, teacher.replies(asked), strict=True):
        records.append(
            dataset.Record(
                id=question.id,
                split=question.split,
                kind=question.kind,
                question=question.question,
                prompt=put.prompt,
                completion=tokenizer.decode(reply.completion_ids),
                prompt_ids=put.prompt_ids,
                completion_ids=list(reply.completion_ids),
                topk_ids=reply.topk_ids,
                topk_logprobs=reply.topk_logprobs,
                topk_tail=reply.topk_tail,
            )
        )
    return header(teacher, tokenizer, options), records


def write(path: str, header: dict, records: list[dataset.Record]) -> None:
    dataset.write_dataset(path, header, records)
