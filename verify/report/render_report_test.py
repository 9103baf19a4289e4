import pytest

from common.errors import InputError
from verify.report import render_report


def test_history_from_the_trainers_csv():
    text = (
        "step,loss,kl,ce,lr,heldout_loss,heldout_kl,heldout_ce\n1,2.5,1,1,0.001,,,\n2,2.0,1,1,0.001,2.2,1,1\n"
    )
    assert render_report.parse_history(text, "h.csv") == [
        {"step": 1, "loss": 2.5, "heldout_loss": None},
        {"step": 2, "loss": 2.0, "heldout_loss": 2.2},
    ]


def test_history_from_json_lines():
    text = '{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0, "heldout_loss": 2.2}\n'
    assert render_report.parse_history(text, "h.jsonl")[1] == {"step": 2, "loss": 2.0, "heldout_loss": 2.2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no loss history rows"),
        ("step,loss\n1,abc\n", "h:2: 'abc' is not a number"),
        ("step,kl\n1,2\n", "h:2: a row needs step and loss"),
        ('{"step": 1, "loss": 2}\n{oops\n', "h:2: not valid JSON"),
    ],
)
def test_bad_history_names_the_line(text, message):
    with pytest.raises(InputError, match=message):
        render_report.parse_history(text, "h")
