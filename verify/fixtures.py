"""Test inputs for the export and verification binaries: a small real dataset, tokenizer and checkpoint.

The checkpoint is an untrained student (seeded initialisation): the binaries' checks are about the
artifacts reproducing the checkpoint, whatever its weights, and training one takes minutes.
"""

import dataclasses
import os

from data import dataset, generate
from training import checkpoint
from training.model import ModelConfig, Student, init_weights


@dataclasses.dataclass(frozen=True)
class Inputs:
    tokenizer: str
    dataset: str
    weights: str
    metadata: str


def write_inputs(directory: str, records: int = 40, seed: int = 0, model_seed: int = 7) -> Inputs:
    """Writes tokenizer.json, kd.jsonl, student.safetensors and student.json into `directory`."""
    tok, header, rows = generate.generate(n=records, seed=seed, heldout_fraction=0.5, topk=4)
    paths = Inputs(
        tokenizer=os.path.join(directory, "tokenizer.json"),
        dataset=os.path.join(directory, "kd.jsonl"),
        weights=os.path.join(directory, "student.safetensors"),
        metadata=os.path.join(directory, "student.json"),
    )
    tok.save(paths.tokenizer)
    dataset.write_dataset(paths.dataset, header, rows)
    model = Student(ModelConfig(vocab_size=tok.vocab_size))
    init_weights(model, seed=model_seed)
    metadata = {
        "tokenizer_sha256": tok.digest,
        "dataset_sha256": checkpoint.sha256_file(paths.dataset),
        "steps": 0,
    }
    checkpoint.save(paths.weights, paths.metadata, model, metadata)
    return paths
