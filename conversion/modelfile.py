"""The Ollama Modelfile that ships beside the GGUF file.

Ollama runs llama.cpp, so the GGUF file carries the model and tokenizer; the Modelfile adds how to
ask: the prompt template the student was trained on and the sampling settings of the `ask` binary
(pipeline/ask.py), whose defaults are training/sampling.DEFAULT: temperature, top_k, top_p and
min_p (Ollama's documented defaults, stated anyway so no runtime's other default applies), no
repeat penalty, at most 32 new tokens, stop at eos. The model is trained with [bos] + prompt; the
GGUF sets tokenizer.ggml.add_bos_token, so the runtime adds bos itself.

The parameters match, the random streams do not: Ollama draws with its own generator, so a given
seed gives another reply there than in `ask`. Ollama's own sampler also scales by the temperature
before top_p and min_p (llama.cpp and `ask` do it last), which moves the top_p cut a little.
"""

from training import sampling

# `ask`'s defaults (one definition: training/sampling.DEFAULT). repeat_penalty 1.0 is off. num_ctx,
# the context, is the checkpoint's max_seq_len: render() takes it.
DEFAULT_PARAMETERS = (
    ("temperature", sampling.DEFAULT.temperature),
    ("top_k", sampling.DEFAULT.top_k),
    ("top_p", sampling.DEFAULT.top_p),
    ("min_p", sampling.DEFAULT.min_p),
    ("repeat_penalty", 1.0),
    ("num_predict", 32),
)


def render(gguf_filename: str, num_ctx: int | None, parameters=DEFAULT_PARAMETERS) -> str:
    """Modelfile text for a GGUF file in the same directory as the Modelfile.

    gguf_filename is a bare file name: Ollama resolves FROM ./name relative to the Modelfile.
    num_ctx: the model's max_seq_len (the GGUF's context_length); None leaves it out.
    """
    if (
        not gguf_filename
        or gguf_filename != gguf_filename.strip()
        or any(c in gguf_filename for c in '/\\\n\r"')
        or gguf_filename in (".", "..")
    ):
        raise ValueError(f"gguf_filename: {gguf_filename!r}; give a bare file name such as model.gguf")
    lines = [
        "# Magic 8 Ball: ask a yes/no question, get one of the 20 classic answers.",
        f"FROM ./{gguf_filename}",
        "",
        '# The prompt format the student was trained on (data/prompt.py): "Q: {question}\\nA:".',
        'TEMPLATE """Q: {{ .Prompt }}',
        'A:"""',
        "",
        'PARAMETER stop "</s>"',
    ]
    if num_ctx is not None:
        parameters = (*parameters, ("num_ctx", num_ctx))
    lines += [f"PARAMETER {name} {value}" for name, value in parameters]
    return "\n".join(lines) + "\n"
