"""Version-2 datasets for tests, made from the rules teacher's version-1 output (data/dataset.py's
module docstring has both formats): the readers', trainer's and binaries' tests need a valid v2
file without running a neural teacher."""

import dataclasses

from data import dataset

RULES_TEACHER = {
    "kind": "rules",
    "model": None,
    "sha256": None,
    "endpoint": None,
    "server_model": None,
    "api": None,
}
SAMPLED = {"mode": "sample", "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0, "max_tokens": 32}


def as_version_2(header: dict, records: list, kd: str, teacher: dict | None = None) -> tuple[dict, list]:
    """(header, records) of a version-1 dataset as version 2. kd "sequence" drops the lists;
    "logits" keeps them, sorted as version 2 asks (logprob down, then id), with their tails.
    `teacher`: the header's teacher block (default: the rules teacher that wrote version 1)."""
    header = {
        **{k: v for k, v in header.items() if k in dataset.HEADER_V2 + dataset.HEADER_V2_OPTIONAL},
        "version": dataset.VERSION_2,
        "teacher": teacher or {**RULES_TEACHER, "model": header["teacher"]},
        "sampling": dict(SAMPLED),
        "kd": kd,
        "soft_targets": kd == "logits",
        "topk": header["topk"] if kd == "logits" else 0,
    }
    converted = []
    for record in records:
        if kd == "sequence":
            converted.append(dataclasses.replace(record, topk_ids=[], topk_logprobs=[], topk_tail=[]))
            continue
        rows = [
            sorted(zip(lps, ids, strict=True), key=lambda entry: (-entry[0], entry[1]))
            for ids, lps in zip(record.topk_ids, record.topk_logprobs, strict=True)
        ]
        converted.append(
            dataclasses.replace(
                record,
                topk_ids=[[i for _, i in row] for row in rows],
                topk_logprobs=[[lp for lp, _ in row] for row in rows],
                topk_tail=[dataset.tail_of(lps) for lps in record.topk_logprobs],
            )
        )
    return header, converted


def version_2_copy(source: str, target: str, kd: str = "logits") -> str:
    """The version-1 dataset file `source` written as version 2 to `target`; returns `target`."""
    read = dataset.read_dataset(source)
    header, records = as_version_2(read.header, read.records, kd)
    dataset.write_dataset(target, header, records)
    return target
