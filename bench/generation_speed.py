"""Greedy generation tokens/s: TorchScript beside llama.cpp running the GGUF export of the same model.

Same student, same prompts, same number of new tokens (eos is ignored so every run does equal
work). Four ways to decode, taking turns prompt by prompt:
  torchscript        torch.jit.trace of the student, full recompute of the sequence per token
                     (training/decode.py's Recompute, how it drives a backend without a cache)
  torchscript kv     the TorchScript decoder (conversion/kv_decoder.py, the shipped
                     magic-8-ball.decode.pt's code): the prompt once, then one token per call
                     against its fixed-size KV cache (how `ask` runs); its ratio is printed
                     against full recompute and, in a second row of the same runs, against
                     llama.cpp kv
  llama.cpp full     llama.cpp, full recompute per token (the same work as TorchScript)
  llama.cpp kv       llama.cpp with its KV cache, one new token per step (how Ollama runs it)
and, with the KV cache, each other GGUF variant the pipeline ships (f16, Q8_0, Q4_0 weights,
conversion/gguf_quant.py), each against the f32 file in the same trials. measure_long_context()
runs the two TorchScript ways again after prompts that fill the context to within the new tokens
of its end, where full recompute costs the most.

measure_kv_decoders() (called by measure()) puts every KV-cache decoder side by side, taking turns
prompt by prompt, at 1 and at 2 threads (torch's intra-op threads; llama.cpp's n_threads):
  llama.cpp kv       the baseline, as above
  AOTInductor kv     the AOTInductor decoder (conversion/aoti_decoder.py, the shipped
                     magic-8-ball.decode.pt2's code, compiled here as the export step compiles it,
                     for one thread: the pipeline's actions run with one), through AOTISteps as
                     `ask` runs it
  torchscript kv     the TorchScript decoder, as above
  eager kv           the eager Student with its growing KV cache (training/decode.py, CachedSteps)
and the compile's wall time (export and the C++ build in a child process, what the torchscript
stage adds for the package).
"""

import os
import tempfile
import time

import numpy as np
import torch
from absl import logging

from bench.table import Row
from common.errors import InputError
from conversion import aoti_decoder, gguf_export, kv_decoder, pt2_archive
from data import prompt as prompt_lib
from training import decode
from verify.gguf_files import gguf_check

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
TORCHSCRIPT = "generation: TorchScript (full recompute)"
TORCHSCRIPT_KV = "generation: TorchScript (KV cache)"
TORCHSCRIPT_KV_VS_LLAMA = "generation: TorchScript (KV cache), vs llama.cpp (KV cache)"
LLAMA_FULL = "generation: llama.cpp (full recompute)"
LLAMA_KV = "generation: llama.cpp (KV cache)"
VARIANTS = ("f16", "Q8_0", "Q4_0")  # beside the f32 file of LLAMA_KV


AOTI_COMPILE = "compile: AOTInductor decoder (export + C++ build, the torchscript stage's share)"
KV_DECODERS = {
    "llama": "llama.cpp (KV cache)",
    "aoti": "AOTInductor decoder (KV cache)",
    "torchscript": "TorchScript decoder (KV cache)",
    "eager": "eager PyTorch (KV cache)",
}
THREAD_COUNTS = (1, 2)


def kv_row(method: str, threads: int) -> str:
    return f"decode: {KV_DECODERS[method]}, {threads} thread{'s' if threads > 1 else ''}"


def variant_row(variant: str) -> str:
    return f"generation: llama.cpp (KV cache), {variant} GGUF"


def torchscript_greedy(module, prompt_ids, new_tokens):
    ids = list(prompt_ids)
    with torch.inference_mode():  # as the decoder's Steps run (conversion/kv_decoder.py)
        for _ in range(new_tokens):
            logits = module(torch.tensor([ids], dtype=torch.int32))
            ids.append(int(logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def torchscript_kv_greedy(steps, prompt_ids, new_tokens):
    out = [int(steps.prefill(prompt_ids).argmax())]
    while len(out) < new_tokens:
        out.append(int(steps.decode(out[-1]).argmax()))
    return out


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


def _rates(methods: dict, inputs, new_tokens: int, repeats: int) -> dict[str, list[float]]:
    """New tokens/s of each method over all inputs, `repeats` times. The methods take turns on each
    input, so a ratio compares runs milliseconds apart rather than a whole pass apart: this
    machine's speed drifts by tens of percent over seconds."""
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        seconds = dict.fromkeys(methods, 0.0)
        for p in inputs:
            for name, run in methods.items():
                start = time.perf_counter()
                run(p)
                seconds[name] += time.perf_counter() - start
        for name in methods:
            rates[name].append(len(inputs) * new_tokens / seconds[name])
    return rates


def _torchscript(model):
    """(the student traced as magic-8-ball.pt is, Steps over the decoder as magic-8-ball.decode.pt is)."""
    module = torch.jit.trace(model.eval(), torch.ones(1, 16, dtype=torch.int32), check_trace=False)
    return module, kv_decoder.TorchScriptSteps(kv_decoder.trace(model), model.cfg)


def long_context_rows(prompt_length: int) -> tuple[str, str]:
    return (
        f"generation, {prompt_length}-token prompt: TorchScript (full recompute)",
        f"generation, {prompt_length}-token prompt: TorchScript (KV cache)",
    )


def measure_long_context(model, new_tokens: int, repeats: int, prompts: int = 2) -> list[Row]:
    """The two TorchScript rows again after prompts that fill the context to new_tokens from its end:
    where a KV cache pays. The prompts are random token ids, since only their length matters here."""
    length = model.cfg.max_seq_len - new_tokens
    if length < 1 or new_tokens < 1 or repeats < 1:
        raise InputError(f"new tokens: 1 to {model.cfg.max_seq_len - 1} (max_seq_len - 1), repeats >= 1")
    generator = torch.Generator().manual_seed(0)
    inputs = [
        torch.randint(0, model.cfg.vocab_size, (length,), generator=generator).tolist()
        for _ in range(prompts)
    ]
    module, steps = _torchscript(model)
    full, cached = long_context_rows(length)
    methods = {
        full: lambda p: torchscript_greedy(module, p, new_tokens),
        cached: lambda p: torchscript_kv_greedy(steps, p, new_tokens),
    }
    replies = {name: [run(p) for p in inputs] for name, run in methods.items()}  # and warm up
    if replies[cached] != replies[full]:
        raise AssertionError("the TorchScript decoder's greedy replies differ from full recompute's")
    rates = _rates(methods, inputs, new_tokens, repeats)
    return [Row(full, "tokens/s", tuple(rates[full])), Row(cached, "tokens/s", tuple(rates[cached]), full)]


def measure(
    model, tokenizer, prompts: int, new_tokens: int, repeats: int, threads: int, dtype: str = "f32"
) -> list[Row]:
    """[TorchScript (baseline), TorchScript kv (twice: against it and against llama.cpp kv),
    llama.cpp full, llama.cpp kv, then llama.cpp kv per variant (baseline llama.cpp kv on the
    `dtype` file)] in new tokens/s."""
    if new_tokens < 1 or repeats < 1 or not 1 <= prompts <= len(QUESTIONS):
        raise InputError(f"new tokens and repeats must be >= 1, prompts in 1..{len(QUESTIONS)}")
    inputs = [prompt_lib.build_model_input(tokenizer, q) for q in QUESTIONS[:prompts]]
    longest = max(len(p) for p in inputs) + new_tokens
    if longest > model.cfg.max_seq_len:
        raise InputError(
            f"new tokens: prompts would reach {longest} tokens; at most {model.cfg.max_seq_len} (max_seq_len)"
        )
    module, steps = _torchscript(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.gguf")
        gguf_export.export(model, tokenizer, path, dtype=dtype)
        # Default runtime settings (f16 KV cache), as Ollama would run the file.
        # Every evaluation on `threads` threads, multi-token ones too, as TorchScript runs.
        llama = gguf_check.load_llama(path, f32_kv_cache=False, n_threads=threads)
        variants = {}
        for variant in VARIANTS:
            variant_path = os.path.join(tmp, f"bench.{variant}.gguf")
            gguf_export.export(model, tokenizer, variant_path, dtype=variant)
            variants[variant] = gguf_check.load_llama(variant_path, f32_kv_cache=False, n_threads=threads)
    methods = {
        TORCHSCRIPT: lambda p: torchscript_greedy(module, p, new_tokens),
        TORCHSCRIPT_KV: lambda p: torchscript_kv_greedy(steps, p, new_tokens),
        LLAMA_FULL: lambda p: llama_full_greedy(llama, p, new_tokens),
        LLAMA_KV: lambda p: llama_kv_greedy(llama, p, new_tokens),
    }
    for variant, variant_llama in variants.items():
        methods[variant_row(variant)] = lambda p, v=variant_llama: llama_kv_greedy(v, p, new_tokens)
    # Warm up each once; the greedy tokens should agree (same model, f32 vs llama.cpp rounding).
    replies = {name: [run(p) for p in inputs] for name, run in methods.items()}
    same = sum(r == replies[TORCHSCRIPT][i] for i, r in enumerate(replies[LLAMA_KV]))
    logging.info("llama.cpp kv greedy reply equals TorchScript's on %d/%d prompts", same, len(inputs))
    if replies[TORCHSCRIPT_KV] != replies[TORCHSCRIPT]:
        raise AssertionError("the TorchScript decoder's greedy replies differ from full recompute's")
    rates = _rates(methods, inputs, new_tokens, repeats)
    logging.info("generation: %d prompts x %d new tokens, %d thread(s)", len(inputs), new_tokens, threads)
    return measure_kv_decoders(model, tokenizer, prompts, new_tokens, repeats) + [
        Row(TORCHSCRIPT, "tokens/s", tuple(rates[TORCHSCRIPT])),
        Row(TORCHSCRIPT_KV, "tokens/s", tuple(rates[TORCHSCRIPT_KV]), TORCHSCRIPT),
        Row(TORCHSCRIPT_KV_VS_LLAMA, "tokens/s", tuple(rates[TORCHSCRIPT_KV]), LLAMA_KV),
        Row(LLAMA_FULL, "tokens/s", tuple(rates[LLAMA_FULL]), TORCHSCRIPT),
        Row(LLAMA_KV, "tokens/s", tuple(rates[LLAMA_KV]), TORCHSCRIPT),
        *(Row(variant_row(v), "tokens/s", tuple(rates[variant_row(v)]), LLAMA_KV) for v in variants),
    ]


def _compiled_steps(model, directory: str) -> tuple[aoti_decoder.AOTISteps, float]:
    """(AOTISteps over the student's package, compiled and checked as export_pytorch does, the
    compile's wall time in seconds)."""
    began = time.monotonic()
    package, build = aoti_decoder.compile_package(aoti_decoder.export_program(model))
    seconds = time.monotonic() - began
    path = os.path.join(directory, "bench.decode.pt2")
    with open(path, "wb") as handle:
        handle.write(package)
    so_sha256 = pt2_archive.so_sha256(package)
    logging.info("AOTInductor decoder compiled in %.1f s (%s)", seconds, build)
    return aoti_decoder.AOTISteps(aoti_decoder.load(path, so_sha256), model.cfg), seconds


def measure_kv_decoders(
    model, tokenizer, prompts: int, new_tokens: int, repeats: int, thread_counts=THREAD_COUNTS
) -> list[Row]:
    """Per thread count: llama.cpp kv (baseline), the AOTInductor decoder, the TorchScript decoder
    and eager, each against llama.cpp and the AOTInductor decoder also against the TorchScript one,
    in new tokens/s; then the compile time."""
    if new_tokens < 1 or repeats < 1 or not 1 <= prompts <= len(QUESTIONS):
        raise InputError(f"new tokens and repeats must be >= 1, prompts in 1..{len(QUESTIONS)}")
    inputs = [prompt_lib.build_model_input(tokenizer, q) for q in QUESTIONS[:prompts]]
    if max(len(p) for p in inputs) + new_tokens > model.cfg.max_seq_len:
        raise InputError(f"new tokens: prompts would pass {model.cfg.max_seq_len} tokens (max_seq_len)")
    before = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        aoti, compile_seconds = _compiled_steps(model, tmp)
        steps = {
            "aoti": aoti,
            "torchscript": kv_decoder.TorchScriptSteps(kv_decoder.trace(model), model.cfg),
            "eager": decode.CachedSteps(model),
        }
        path = os.path.join(tmp, "bench.gguf")
        gguf_export.export(model, tokenizer, path, dtype="f32")
        try:
            for threads in thread_counts:
                torch.set_num_threads(threads)
                # Default runtime settings (f16 KV cache), as Ollama runs the file.
                llama = gguf_check.load_llama(path, f32_kv_cache=False, n_threads=threads)
                methods = {
                    kv_row("llama", threads): lambda p, llama=llama: llama_kv_greedy(llama, p, new_tokens)
                }
                for name, method in steps.items():
                    methods[kv_row(name, threads)] = lambda p, m=method: torchscript_kv_greedy(
                        m, p, new_tokens
                    )
                replies = {name: [run(p) for p in inputs] for name, run in methods.items()}  # and warm up
                eager = replies[kv_row("eager", threads)]
                for name in ("aoti", "torchscript"):
                    same = sum(r == e for r, e in zip(replies[kv_row(name, threads)], eager, strict=True))
                    logging.info("%s: greedy replies equal eager's on %d/%d prompts", name, same, len(inputs))
                rates = _rates(methods, inputs, new_tokens, repeats)
                baseline = kv_row("llama", threads)
                rows.append(Row(baseline, "tokens/s", tuple(rates[baseline])))
                for name in steps:
                    rows.append(
                        Row(kv_row(name, threads), "tokens/s", tuple(rates[kv_row(name, threads)]), baseline)
                    )
                rows.append(
                    Row(
                        kv_row("aoti", threads) + ", vs the TorchScript decoder",
                        "tokens/s",
                        tuple(rates[kv_row("aoti", threads)]),
                        kv_row("torchscript", threads),
                    )
                )
        finally:
            torch.set_num_threads(before)
    return rows + [Row(AOTI_COMPILE, "s", (compile_seconds,))]
