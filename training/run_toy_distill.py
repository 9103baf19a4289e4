"""Distils the Magic 8 Ball student from a KD dataset (make_toy_kd's JSONL) into a checkpoint.

    run_toy_distill --in=kd.jsonl --tokenizer=tokenizer.json \\
        --out_weights=student.safetensors --out_metadata=student.json [--out_history=history.csv]

Same inputs and flags (including --threads) -> byte-identical outputs. Every output is written at
the end, atomically: a failed run leaves none. Bad input exits 2 with one line naming the problem.

Data parallel (training/parallel.py): under `torchrun --nproc-per-node=N -m training.run_toy_distill`
or with --nproc=N (which starts torchrun itself after checking every flag and file), N ranks
split each global batch; rank 0 alone writes the outputs, and the metadata's
training.distributed records the world size and backend. --threads is per rank.
--compile runs the student through torch.compile when a C++ compiler is present (else one
warning, and eager training). Both are off by default; the default run is unchanged.

A dataset without soft targets (version 2, kd "sequence": data/dataset.py) trains on the
cross-entropy alone; the trainer logs one line saying so, and the metadata's training.kd and
training.loss record which loss was minimised.
"""

import csv
import dataclasses
import io
import os
import signal
import subprocess
import sys

from absl import flags, logging

from common import atomic, child_python, cli, quiet
from common.errors import InputError
from data import dataset as kd_dataset
from data.tokenizer import Tokenizer
from training import arch_flags, checkpoint, parallel
from training.config import LossConfig, ModelConfig, TrainConfig

_DEFAULTS = TrainConfig()
_LOSS_DEFAULTS = LossConfig()

flags.DEFINE_string("in", None, "KD dataset JSONL written by data/make_toy_kd (required).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON; its sha256 must match the dataset header.")
flags.DEFINE_string("out_weights", None, "Output: student weights (safetensors).")
flags.DEFINE_string("out_metadata", None, "Output: checkpoint metadata JSON.")
flags.DEFINE_string(
    "out_history", None, "Optional output: loss history CSV (step, loss, kl, ce, lr, heldout_*)."
)
flags.DEFINE_integer("steps", _DEFAULTS.steps, "Optimizer steps.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Sequences per step.")
flags.DEFINE_float("lr", _DEFAULTS.lr, "Peak AdamW learning rate (linear warmup, cosine decay).")
flags.DEFINE_integer("warmup", _DEFAULTS.warmup, "Linear warmup steps.")
flags.DEFINE_float("temperature", _LOSS_DEFAULTS.temperature, "Distillation temperature T.")
flags.DEFINE_float(
    "kl_weight",
    _LOSS_DEFAULTS.kl_weight,
    "Weight of the T^2-scaled KL over the teacher's top-k ids and its tail (training/distill.py); "
    "a dataset without soft targets (kd sequence) trains without it.",
)
flags.DEFINE_float("ce_weight", _LOSS_DEFAULTS.ce_weight, "Weight of the cross-entropy on teacher tokens.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for initialisation and data order.")
flags.DEFINE_integer("threads", 2, "torch threads; results are reproducible for a fixed value.")
flags.DEFINE_integer("heldout_every", _DEFAULTS.heldout_every, "Steps between held-out evaluations.")
flags.DEFINE_integer(
    "nproc", 1, "Data-parallel processes on this machine: >1 starts torchrun with this many ranks."
)
flags.DEFINE_enum(
    "backend", "auto", parallel.BACKENDS, "torch.distributed backend: auto is nccl with CUDA, else gloo."
)
flags.DEFINE_bool("compile", False, "Run the student through torch.compile (needs a C++ compiler).")

FLAGS = flags.FLAGS

HISTORY_COLUMNS = ("step", "loss", "kl", "ce", "lr", "heldout_loss", "heldout_kl", "heldout_ce")


def _check_flags() -> None:
    for name in ("in", "tokenizer", "out_weights", "out_metadata"):
        cli.require_flag(FLAGS[name].value, name)
    positive = {"steps": FLAGS.steps, "batch_size": FLAGS.batch_size, "lr": FLAGS.lr}
    positive.update(temperature=FLAGS.temperature, threads=FLAGS.threads)
    for name, value in positive.items():
        if not value > 0:
            raise InputError(f"--{name}: must be > 0, got {value}")
    for name in ("warmup", "kl_weight", "ce_weight", "heldout_every"):
        if not FLAGS[name].value >= 0:
            raise InputError(f"--{name}: must be >= 0, got {FLAGS[name].value}")
    if FLAGS.nproc < 1:
        raise InputError(f"--nproc: must be >= 1, got {FLAGS.nproc}")
    if FLAGS.nproc > 1 and _under_torchrun():
        raise InputError(
            "--nproc: this process is already a torchrun rank; give --nproc or torchrun, not both"
        )
    parallel.check_world_fits(_world_size(), FLAGS.batch_size, None, _world_source())
    if FLAGS.kl_weight == 0 and FLAGS.ce_weight == 0:
        raise InputError("--kl_weight and --ce_weight are both 0; nothing would be trained")
    # Outputs are checked before training, not after minutes of it.
    outputs = {name: FLAGS[name].value for name in ("out_weights", "out_metadata", "out_history")}
    cli.check_distinct_outputs(outputs)
    for name, path in outputs.items():
        if path:
            cli.check_output_path(path, name)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "RANK" in os.environ


def _world_size() -> int:
    return parallel.launched_world_size() if _under_torchrun() else FLAGS.nproc


def _world_source() -> str:
    return "torchrun's WORLD_SIZE" if _under_torchrun() else "--nproc"


def _launch(nproc: int) -> None:
    """Runs this trainer as `nproc` torchrun ranks; a failed rank is a clear error, exit status 1."""
    args = parallel.without_flag(sys.argv[1:], "nproc")
    env = child_python.child_env()
    command = parallel.torchrun_command(sys.executable, nproc, "training.run_toy_distill", args)
    logging.info("starting %d ranks: %s", nproc, " ".join(command))
    status = subprocess.run(command, env=env, check=False).returncode
    if status != 0:
        written = [FLAGS[n].value for n in ("out_weights", "out_metadata", "out_history") if FLAGS[n].value]
        print(
            f"error: the {nproc}-rank training job failed (torchrun exit status {status}; the failed "
            f"rank and its error are reported above); rank 0 writes only after the last step, so "
            f"{', '.join(written)} were not written by this run",
            file=sys.stderr,
        )
        sys.exit(1)


def _check_records(path: str, records: list, cfg: ModelConfig) -> None:
    """Checks what the model (not the dataset format) needs: ids in its vocabulary, a length it takes."""
    for record in records:
        where = f"{path}: record id {record.id}"
        ids = [*record.prompt_ids, *record.completion_ids, *(i for row in record.topk_ids for i in row)]
        if ids and max(ids) >= cfg.vocab_size:
            raise InputError(f"{where}: token id {max(ids)} is outside the vocabulary of {cfg.vocab_size}")
        length = 1 + len(record.prompt_ids) + len(record.completion_ids)
        if length > cfg.max_seq_len:
            raise InputError(f"{where}: {length} tokens, longer than the model's {cfg.max_seq_len}")


# What the checkpoint metadata's training.loss says was minimised, by the dataset's kd mode.
LOSS_DESCRIPTION = {
    "logits": "kl_weight * T^2 * KL(k+1 buckets: the teacher's top-k ids and the tail) + ce_weight * CE",
    "sequence": "ce_weight * CE (kd sequence: the dataset has no soft targets)",
}


def _kl_weight(in_path: str, kd: str) -> float:
    """The KL term's weight: --kl_weight, or 0 for a dataset without soft targets (kd "sequence"),
    where the KL cannot be computed. Asking for it there explicitly is an error, not a silent 0."""
    if kd == "logits":
        return FLAGS.kl_weight
    if FLAGS["kl_weight"].present and FLAGS.kl_weight > 0:
        raise InputError(
            f"{in_path}:1: kd: is 'sequence' (no soft targets), so there is no KL term to weigh; "
            "drop --kl_weight or pass --kl_weight=0"
        )
    if FLAGS.ce_weight == 0:
        raise InputError(
            f"{in_path}:1: kd: is 'sequence' (no soft targets) and --ce_weight is 0; nothing would be trained"
        )
    if os.environ.get("RANK", "0") == "0":  # one line for the job, not one per rank
        logging.info("%s: kd sequence (no soft targets): training on the cross-entropy alone", in_path)
    return 0.0


def history_csv(history: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=HISTORY_COLUMNS, lineterminator="\n", restval="")
    writer.writeheader()
    for row in history:
        writer.writerow(
            {key: repr(value) if isinstance(value, float) else value for key, value in row.items()}
        )
    return out.getvalue()


def main(argv: list[str]) -> None:
    del argv
    # A pipeline stage prints nothing on success but the parameter count (common/quiet.py): the
    # per-step progress reaches Bazel's terminal only once the action has ended. --verbosity=0
    # brings it back.
    quiet.own_logs()
    _check_flags()
    in_path = FLAGS["in"].value
    tokenizer = Tokenizer.load(FLAGS.tokenizer)
    # The tokenizer is checked at the header, before any record: ids of another tokenizer are noise.
    data = kd_dataset.read_dataset(in_path, tokenizer.digest, FLAGS.tokenizer)
    train_records = [r for r in data.records if r.split == "train"]
    heldout_records = [r for r in data.records if r.split == "heldout"]
    if not train_records:
        raise InputError(f'{in_path}: no records with split "train"; nothing to train on')
    if not heldout_records:
        raise InputError(f'{in_path}: no records with split "heldout"; the held-out loss needs some')
    kl_weight = _kl_weight(in_path, data.kd)
    cfg = arch_flags.config(tokenizer.vocab_size)  # the architecture flags, checked before torch
    _check_records(in_path, data.records, cfg)
    parallel.check_world_fits(_world_size(), FLAGS.batch_size, len(train_records), _world_source())
    use_compile = FLAGS.compile
    blocker = parallel.compile_blocker() if use_compile else None
    if blocker:
        if os.environ.get("RANK", "0") == "0":
            logging.warning("--compile: %s; training eagerly", blocker)
        use_compile = False

    # torch only now, after every check of flags and files: bad input fails in well under a second
    # instead of after torch's seconds-long import. Before it loads OpenMP: idle OpenMP threads
    # sleep instead of spinning. With --threads=2 on a 2-core machine that runs anything else (a
    # parallel build), spinning made training 2x slower (130 s against 60 s with one core busy,
    # 44 s against 39 s idle); the results are byte-identical either way.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # cuBLAS is deterministic only with a fixed workspace (NCCL runs on GPUs); CPU ignores it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    import torch

    from training import distill
    from training.model import Student, count_parameters, init_weights

    world = None
    if FLAGS.nproc > 1 or _under_torchrun():
        backend = parallel.resolve_backend(FLAGS.backend)
        if FLAGS.nproc > 1:
            _launch(FLAGS.nproc)
            return
        # torchrun stops the other ranks with SIGTERM when one fails: exit through Python, so an
        # output being written is removed (common/atomic) instead of left as a temporary file.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        world = parallel.init(backend)
        if world.rank != 0:
            logging.set_verbosity(logging.WARNING)  # one rank's progress lines are the job's

    torch.manual_seed(FLAGS.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(FLAGS.threads)
    model = Student(cfg)
    init_weights(model, FLAGS.seed)
    n_params = count_parameters(model)
    if world is None or world.rank == 0:
        print(arch_flags.describe(cfg), flush=True)
    if world is not None and world.device != "cpu":
        model.to(world.device)

    train_cfg = TrainConfig(
        steps=FLAGS.steps,
        batch_size=FLAGS.batch_size,
        lr=FLAGS.lr,
        warmup=FLAGS.warmup,
        seed=FLAGS.seed,
        heldout_every=FLAGS.heldout_every,
    )
    loss_cfg = LossConfig(temperature=FLAGS.temperature, kl_weight=kl_weight, ce_weight=FLAGS.ce_weight)
    train_data = distill.make_batch(train_records, tokenizer.bos_id, tokenizer.pad_id)
    heldout_data = distill.make_batch(heldout_records, tokenizer.bos_id, tokenizer.pad_id)
    logging.info("training on %d records, %d held out", len(train_records), len(heldout_records))
    result = distill.train(
        model, train_data, heldout_data, train_cfg, loss_cfg, world=world, compile=use_compile
    )
    if world is not None:
        parallel.shutdown()
        model.to("cpu")
        if world.rank != 0:
            return  # every rank holds the same weights; rank 0 alone writes them
    logging.info(
        "final train loss %.4f, held-out loss %.4f", result.final_train["loss"], result.final_heldout["loss"]
    )

    metadata = {
        "tokenizer_sha256": tokenizer.digest,
        "dataset_sha256": checkpoint.sha256_file(in_path),
        "steps": train_cfg.steps,
        "final_train_loss": result.final_train["loss"],
        "final_train_kl": result.final_train["kl"],
        "final_train_ce": result.final_train["ce"],
        "heldout_loss": result.final_heldout["loss"],
        "heldout_kl": result.final_heldout["kl"],
        "heldout_ce": result.final_heldout["ce"],
        "parameter_count": n_params,
        "tie_embeddings": cfg.tie_embeddings,
        "train_records": len(train_records),
        "heldout_records": len(heldout_records),
        # From the config dataclasses themselves, so a new setting is recorded without an edit here.
        "training": {
            **dataclasses.asdict(train_cfg),
            **dataclasses.asdict(loss_cfg),
            "threads": FLAGS.threads,
            "optimizer": f"AdamW(betas=(0.9, {train_cfg.beta2}), eps=1e-8)",
            "kd": data.kd,
            "loss": LOSS_DESCRIPTION[data.kd],
        },
    }
    # Only when used, so a default run's metadata (and every cache entry after it) stays as it was.
    if world is not None:
        metadata["training"]["distributed"] = {"world_size": world.size, "backend": world.backend}
    if use_compile:
        metadata["training"]["compile"] = True
    if FLAGS.out_history:
        atomic.write_text(FLAGS.out_history, history_csv(result.history))
    try:
        checkpoint.save(FLAGS.out_weights, FLAGS.out_metadata, model, metadata)
    except BaseException:
        if FLAGS.out_history:  # every output or none
            os.remove(FLAGS.out_history)
        raise


if __name__ == "__main__":
    cli.run(main)
