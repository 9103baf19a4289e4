"""The prompt format shared by data generation, training, export checks and the `ask` binary.

prompt      "Q: {question}\nA:"
completion  " {answer} {flair}" (see data/teacher.py), then eos
model input [bos] + encode(prompt)                          (asking)
            [bos] + encode(prompt) + encode(completion) + [eos]  (training)
"""

import unicodedata

from common.errors import InputError


def format_prompt(question: str) -> str:
    """ "Q: {question}\\nA:". The question must be one non-empty line (a newline would fake the "A:")."""
    if not isinstance(question, str) or not question.strip():
        raise InputError("question: is empty; ask a yes/no question such as 'Will it rain tomorrow?'")
    if "\n" in question or "\r" in question:
        raise InputError("question: holds a line break; ask on a single line")
    for position, c in enumerate(question):
        if unicodedata.category(c) == "Cc":  # tabs, escapes, NUL, DEL, C1 controls: invisible input
            raise InputError(
                f"question: holds control character U+{ord(c):04X} at position {position}; remove it"
            )
    return f"Q: {question}\nA:"


def build_model_input(tokenizer, question: str) -> list[int]:
    """[bos] + encode(format_prompt(question)): what the model sees before it answers."""
    return [tokenizer.bos_id, *tokenizer.encode(format_prompt(question))]


def build_training_sequence(tokenizer, question: str, completion: str) -> list[int]:
    """[bos] + encode(prompt) + encode(completion) + [eos]."""
    return [*build_model_input(tokenizer, question), *tokenizer.encode(completion), tokenizer.eos_id]
