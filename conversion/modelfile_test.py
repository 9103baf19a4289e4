import pytest

from conversion import modelfile
from training import sampling


def test_modelfile_points_at_the_gguf_and_uses_the_training_prompt():
    text = modelfile.render("magic-8-ball.gguf", 512)
    lines = text.splitlines()
    assert "FROM ./magic-8-ball.gguf" in lines
    # data/prompt.py's format, with the newline as a real newline inside a """ block.
    assert 'TEMPLATE """Q: {{ .Prompt }}\nA:"""' in text
    assert 'PARAMETER stop "</s>"' in lines
    params = dict(line.split()[1:3] for line in lines if line.startswith("PARAMETER ") and "stop" not in line)
    assert params == {
        "temperature": "0.8",
        "top_k": "40",
        "top_p": "0.9",
        "min_p": "0.0",
        "repeat_penalty": "1.0",
        "num_ctx": "512",
        "num_predict": "32",
    }
    # The same values as `ask`'s defaults, read back as numbers.
    default = sampling.DEFAULT
    assert float(params["temperature"]) == default.temperature and int(params["top_k"]) == default.top_k
    assert float(params["top_p"]) == default.top_p and float(params["min_p"]) == default.min_p
    assert text.endswith("\n") and not any(line != line.rstrip() for line in lines)
    assert modelfile.render("magic-8-ball.gguf", 512) == text


def test_custom_parameters():
    text = modelfile.render("m.gguf", None, parameters=(("temperature", 0.1),))
    assert "PARAMETER temperature 0.1" in text and "num_ctx" not in text


@pytest.mark.parametrize(
    "name", ["", "dir/m.gguf", "/abs/m.gguf", 'm".gguf', "m.gguf\nFROM x", " m.gguf", ".."]
)
def test_refuses_names_that_are_not_bare_file_names(name):
    with pytest.raises(ValueError, match="bare file name"):
        modelfile.render(name, 256)
