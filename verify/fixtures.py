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


SHORT_STATEFUL_LENGTHS = [16, 32]  # the short stateful package's contract lengths: a 32-slot cache


def short_stateful_student() -> Student:
    """The default-config student, seeded and untrained, in eval mode: the short package's model."""
    model = Student(ModelConfig())
    init_weights(model, seed=0)
    return model.eval()


def write_short_stateful_package(directory: str) -> str:
    """short_stateful_student() as a stateful package of SHORT_STATEFUL_LENGTHS with 16-token calls:
    short enough for a test to step through every slot. Returns its path."""
    from conversion import coreml, coreml_stateful

    path = os.path.join(directory, "short.stateful.mlpackage")
    metadata = {"short_description": "test", "version": "1"}
    program = coreml_stateful.convert(short_stateful_student(), SHORT_STATEFUL_LENGTHS, 16, metadata)
    coreml.save_mlpackage(program, path)
    return path


def measured_gates(inputs: Inputs, lengths, backends, settings=None) -> dict:
    """The contract's gates for the fixture checkpoint, from floors measured as the pipeline does."""
    from conversion import gates as gates_lib
    from data.tokenizer import Tokenizer
    from verify import inputs as inputs_lib
    from verify.floors import floors

    settings = settings or inputs_lib.Settings(text_sequences=10, behaviour_questions=6, max_new_tokens=8)
    tok = Tokenizer.load(inputs.tokenizer)
    model, _ = checkpoint.load(inputs.weights, inputs.metadata)
    heldout = sorted(dataset.read_dataset(inputs.dataset).split("heldout"), key=lambda r: r.id)
    rows = inputs_lib.numeric_rows(sorted(lengths), tok.vocab_size, tok, heldout, settings)
    prompts = inputs_lib.replay_prompts(tok, heldout, settings)
    continuations = inputs_lib.replay_continuations(model, tok, prompts, settings)
    precisions = sorted({gates_lib.DEFAULT_BACKENDS[name] for name in backends})
    measured = floors.measure(model, rows, prompts, continuations, tok.pad_id, precisions)
    doc = {
        "floors": {
            p: {w: {m: gates_lib.round4(v) for m, v in ms.items()} for w, ms in scopes.items()}
            for p, scopes in measured.items()
        },
        "inputs": settings.to_dict(),
        "methods": dict(floors.METHODS),
    }
    return gates_lib.make_gates(doc, {name: gates_lib.DEFAULT_BACKENDS[name] for name in backends})
