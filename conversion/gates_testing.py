"""Test support: a structurally valid "gates" section for contracts that unit tests build by hand.

Its floors are placeholders, not measurements: tests that check numbers against bounds measure real
floors (verify/fixtures.py, measured_gates); tests of the contract's format and readers use these.
"""

from conversion import gates as gates_lib

PLACEHOLDER_FLOOR = 1e-3


def floors_doc(lengths, checkpoint_sha256: str = "0" * 64, floor: float = PLACEHOLDER_FLOOR) -> dict:
    lengths = sorted(lengths)
    metrics = {metric: floor for metric in gates_lib.METRICS}
    return {
        "format": gates_lib.FLOORS_FORMAT,
        "version": gates_lib.FLOORS_VERSION,
        "checkpoint_sha256": checkpoint_sha256,
        "lengths": lengths,
        "inputs": {"seed": 0, "text_sequences": 4, "behaviour_questions": 4, "max_new_tokens": 8},
        "methods": {p: "placeholder (test)" for p in _precisions()},
        "floors": {
            p: {
                where: dict(metrics)
                for where in gates_lib.scope_names(lengths, p not in gates_lib.REFERENCE_PRECISIONS)
            }
            for p in _precisions()
        },
    }


def _precisions() -> list[str]:
    """Every precision the default backends compute in, and the references of the lossy ones."""
    return sorted({*gates_lib.DEFAULT_BACKENDS.values(), *gates_lib.REFERENCE_PRECISIONS})


def gates(lengths=(64, 128, 256), backends=None) -> dict:
    return gates_lib.make_gates(floors_doc(lengths), backends or dict(gates_lib.DEFAULT_BACKENDS))
