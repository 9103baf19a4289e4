"""The Ollama Modelfile that ships beside the GGUF file.

Ollama runs llama.cpp, so the GGUF file carries the model and tokenizer; the Modelfile adds how to
ask: the prompt template the student was trained on and sampling settings that mirror the `ask`
binary (pipeline/ask.py): plain temperature sampling over the whole vocabulary, no top-k/top-p cut
and no repeat penalty, at most 32 new tokens, stop at eos. The model is trained with [bos] + prompt;
the GGUF sets tokenizer.ggml.add_bos_token, so the runtime adds bos itself.
"""

CONTEXT_LENGTH = 256  # the longest sequence the student was trained and exported for

# Sampling that matches `ask` (pipeline/ask.py defaults): top_k 0 and top_p 1.0 switch those
# filters off in llama.cpp's sampler, repeat_penalty 1.0 switches the penalty off.
DEFAULT_PARAMETERS = (
    ("temperature", 0.8),
    ("top_k", 0),
    ("top_p", 1.0),
    ("repeat_penalty", 1.0),
    ("num_ctx", CONTEXT_LENGTH),
    ("num_predict", 32),
)


def render(gguf_filename: str, parameters=DEFAULT_PARAMETERS) -> str:
    """Modelfile text for a GGUF file in the same directory as the Modelfile.

    gguf_filename is a bare file name: Ollama resolves FROM ./name relative to the Modelfile.
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
    lines += [f"PARAMETER {name} {value}" for name, value in parameters]
    return "\n".join(lines) + "\n"
