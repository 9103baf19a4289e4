"""Benchmark: greedy generation through llama.cpp (the GGUF artifact) beside TorchScript.

Same student, same prompts, same number of new tokens (eos is ignored so every run does equal
work). Three ways to decode, trials alternating, --repeats times each:
  torchscript        torch.jit.trace of the student, full recompute of the sequence per token
                     (how training/generate.py drives every backend)
  llama.cpp full     llama.cpp, full recompute per token (the same work as TorchScript)
  llama.cpp kv       llama.cpp with its KV cache, one new token per step (how Ollama runs it)
Prints median new tokens/s of each and their ratios to TorchScript. Not a test: timings vary.

    python bench/gguf_bench.py [--weights=student.safetensors --metadata=student.json \\
        --tokenizer=tokenizer.json] [--new_tokens=32] [--repeats=3] [--threads=1]

Without a checkpoint it uses a freshly initialised student (seed 0) and make_toy_kd's tokenizer
of a small generated dataset: speed does not depend on the weights' values.
"""

import os
import statistics
import tempfile
import time

import numpy as np
import torch
from absl import flags, logging

from common import cli
from common.errors import InputError
from conversion import gguf_export
from data import generate as make_data
from data import prompt as prompt_lib
from data import tokenizer as tokenizer_lib
from training import checkpoint
from training.model import ModelConfig, Student, init_weights
from verify import gguf_check

flags.DEFINE_string("weights", None, "Student weights (safetensors); default: a fresh seed-0 student.")
flags.DEFINE_string("metadata", None, "Student metadata JSON (with --weights).")
flags.DEFINE_string("tokenizer", None, "Tokenizer JSON (with --weights); default: a generated one.")
flags.DEFINE_enum("dtype", "f32", list(gguf_export.DTYPES), "GGUF matrix storage type.")
flags.DEFINE_integer("new_tokens", 32, "New tokens per prompt (eos ignored).")
flags.DEFINE_integer("prompts", 8, "Number of prompts.")
flags.DEFINE_integer("repeats", 3, "Trials per method (alternating).")
flags.DEFINE_integer("threads", 1, "Threads for torch and llama.cpp.")
FLAGS = flags.FLAGS

QUESTIONS = [
    "Will it rain tomorrow?",
    "Should I learn to play the guitar? 🎱",
    "Is my cat secretly a genius?",
    "Will I win the lottery this year? ✨",
    "Can I finish the marathon?",
    "Am I going to get the job? 🔮",
    "Should I move to a new city?",
    "Is today my lucky day? 🌟",
]


def _inputs():
    if FLAGS.weights:
        for name in ("metadata", "tokenizer"):
            cli.require_flag(FLAGS[name].value, name)
        tokenizer = tokenizer_lib.Tokenizer.load(FLAGS.tokenizer)
        model, _ = checkpoint.load(FLAGS.weights, FLAGS.metadata, expected_vocab_size=tokenizer.vocab_size)
        return model, tokenizer
    tokenizer, _, _ = make_data.generate(n=200, seed=0, heldout_fraction=0.5, topk=4)
    model = Student(ModelConfig(vocab_size=tokenizer.vocab_size))
    init_weights(model, seed=0)
    return model.eval(), tokenizer


def torchscript_greedy(module, prompt_ids, new_tokens):
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = module(torch.tensor([ids], dtype=torch.int32))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def llama_full_greedy(llama, prompt_ids, new_tokens):
    ids = list(prompt_ids)
    for _ in range(new_tokens):
        logits = gguf_check.gguf_logits(llama, np.array([ids], np.int32))
        ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def llama_kv_greedy(llama, prompt_ids, new_tokens):
    llama.reset()
    llama.eval(list(prompt_ids))
    out = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
        llama.eval([out[-1]])
    return out


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.new_tokens < 1 or FLAGS.repeats < 1 or not 1 <= FLAGS.prompts <= len(QUESTIONS):
        raise InputError(f"--new_tokens and --repeats must be >= 1, --prompts in 1..{len(QUESTIONS)}")
    torch.set_num_threads(FLAGS.threads)
    model, tokenizer = _inputs()
    prompts = [prompt_lib.build_model_input(tokenizer, q) for q in QUESTIONS[: FLAGS.prompts]]
    longest = max(len(p) for p in prompts) + FLAGS.new_tokens
    if longest > gguf_check.N_CTX:
        raise InputError(f"--new_tokens: prompts would reach {longest} tokens; at most {gguf_check.N_CTX}")
    module = torch.jit.trace(model, torch.ones(1, 16, dtype=torch.int32), check_trace=False)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.gguf")
        gguf_export.export(model, tokenizer, path, dtype=FLAGS.dtype)
        # Default runtime settings (f16 KV cache), as Ollama would run the file.
        llama = gguf_check.load_llama(path, f32_kv_cache=False, n_threads=FLAGS.threads)
    methods = {
        "torchscript": lambda p: torchscript_greedy(module, p, FLAGS.new_tokens),
        "llama.cpp full": lambda p: llama_full_greedy(llama, p, FLAGS.new_tokens),
        "llama.cpp kv": lambda p: llama_kv_greedy(llama, p, FLAGS.new_tokens),
    }
    # Warm up each once; the greedy tokens should agree (same model, f32 vs llama.cpp rounding).
    replies = {name: [run(p) for p in prompts] for name, run in methods.items()}
    same = sum(r == replies["torchscript"][i] for i, r in enumerate(replies["llama.cpp kv"]))
    logging.info("llama.cpp kv greedy reply equals TorchScript's on %d/%d prompts", same, len(prompts))
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(FLAGS.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            for p in prompts:
                run(p)
            rates[name].append(len(prompts) * FLAGS.new_tokens / (time.perf_counter() - start))
    base = statistics.median(rates["torchscript"])
    print(
        f"greedy decoding, {len(prompts)} prompts x {FLAGS.new_tokens} new tokens, {FLAGS.threads} thread(s)"
    )
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"  {name:15s} {median:9.1f} tokens/s   x{median / base:5.2f} vs torchscript")


if __name__ == "__main__":
    cli.run(main)
