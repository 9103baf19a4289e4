"""The dataset and contract readers under hypothesis, a bounded number of derandomized examples:
a valid parse or InputError naming the file, never another exception (//tests:fuzz_long runs more)."""

from tests import fuzz_readers

EXAMPLES = 300


def test_the_valid_files_parse():
    fuzz_readers.check_dataset("".join(line + "\n" for line in fuzz_readers.valid_dataset_lines()).encode())
    fuzz_readers.check_contract(fuzz_readers.valid_contract_text().encode())


def test_dataset_reader_parses_or_refuses_cleanly():
    fuzz_readers.dataset_property(EXAMPLES)()


def test_contract_reader_parses_or_refuses_cleanly():
    fuzz_readers.contract_property(EXAMPLES)()


def test_the_known_crashers_are_clean_errors():
    """Inputs hypothesis found crashing the readers before they were fixed (kept as regressions)."""
    lines = list(fuzz_readers.valid_dataset_lines())
    for raw in fuzz_readers.RAW_TEXT:
        fuzz_readers.check_dataset("\n".join([lines[0], raw, *lines[1:]]).encode() + b"\n")
        fuzz_readers.check_contract(raw.encode())
    record = lines[1].replace('"topk_logprobs":[[', '"topk_logprobs":[[-' + "9" * 400 + ",", 1)
    fuzz_readers.check_dataset("\n".join([lines[0], record]).encode() + b"\n")
    contract = fuzz_readers.valid_contract_text().replace('"factor": 4.0', '"factor": 1' + "0" * 400, 1)
    assert contract != fuzz_readers.valid_contract_text()
    fuzz_readers.check_contract(contract.encode())
