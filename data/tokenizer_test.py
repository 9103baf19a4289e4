import hashlib
import json
import os
import random
import tempfile

# Hypothesis keeps caches in ./.hypothesis unless told otherwise; keep them out of the source tree.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY",
    os.path.join(os.environ.get("TEST_TMPDIR", tempfile.gettempdir()), "m8b-hypothesis"),
)

import gguf
import llama_cpp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InputError
from data import tokenizer as tk

CORPUS = [
    "Q: Will I pass my exams?\nA:",
    "Q: Won't I get rich? 🔮\nA:",
    "Q: Should I really travel to Japan? ✨\nA:",
    "Q: Is it my destiny to marry my crush? 🌟\nA:",
    "Q: Can I win the lottery? 🎱\nA:",
    " It is certain. 🌟",
    " Reply hazy, try again. 🔮",
    " Don't count on it. 🎱",
    " Signs point to yes. ✨",
    " Outlook not so good. 🎱",
]
HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=300)


@pytest.fixture(scope="module")
def tok() -> tk.Tokenizer:
    return tk.train(CORPUS * 3, vocab_size=360)


def naive_encode(tok: tk.Tokenizer, text: str) -> list[int]:
    """Reference SPM: rescan all adjacent pairs, merge the best score, leftmost on ties."""
    lookup = {p: i for i, p in enumerate(tok.pieces)}
    syms = [tk.SPACE if c == " " else None if c == tk.SPACE else c for c in text]
    while True:
        best = None
        for i in range(len(syms) - 1):
            if syms[i] is None or syms[i + 1] is None or syms[i] + syms[i + 1] not in lookup:
                continue
            score = tok.scores[lookup[syms[i] + syms[i + 1]]]
            if best is None or score > best[0]:
                best = (score, i)
        if best is None:
            break
        i = best[1]
        syms[i : i + 2] = [syms[i] + syms[i + 1]]
    out = []
    for s in syms:
        if s is not None and s in lookup:
            out.append(lookup[s])
        else:
            out += [tk.BYTE_OFFSET + b for b in (s or tk.SPACE).encode("utf-8", "surrogatepass")]
    return out


def handmade(pieces: list[str], scores: list[float]) -> tk.Tokenizer:
    base, base_scores, base_types = tk._special_layout()
    return tk.Tokenizer(base + pieces, base_scores + scores, base_types + [tk.NORMAL] * len(pieces))


def test_layout_matches_the_gguf_llama_vocabulary(tok):
    assert tok.vocab_size == len(tok.pieces) == len(tok.scores) == len(tok.token_types) == 360
    assert tok.pieces[:4] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.token_types[:4] == [tk.UNKNOWN, tk.CONTROL, tk.CONTROL, tk.CONTROL]
    assert tok.pieces[4] == "<0x00>" and tok.pieces[4 + 0xAB] == "<0xAB>" and tok.pieces[259] == "<0xFF>"
    assert tok.token_types[4:260] == [tk.BYTE] * 256
    assert tok.scores[:260] == [0.0] * 260
    normal = tok.scores[260:]
    assert all(s < 0 for s in normal) and normal == sorted(normal, reverse=True)
    assert set(tok.token_types[260:]) == {tk.NORMAL}


def test_default_vocab_size_is_512_and_a_tiny_corpus_is_padded_with_unused_tokens():
    small = tk.train(["ab ab"])
    assert small.vocab_size == tk.VOCAB_SIZE == 512
    assert small.pieces[260:265] == ["a", "b", "▁", "ab", "▁ab"]
    assert small.pieces[265] == "<unused0>" and small.token_types[265:] == [tk.UNUSED] * (512 - 265)
    assert small.decode(small.encode("ab ab ba")) == "ab ab ba"
    assert small.encode("ab ab") == [263, 264]


def test_training_is_deterministic_and_independent_of_text_order():
    shuffled = list(CORPUS)
    random.Random(1).shuffle(shuffled)
    assert tk.train(CORPUS, 330).to_bytes() == tk.train(shuffled, 330).to_bytes()


def test_training_breaks_count_ties_by_pair_text():
    # "ab", "cd" and "xy" each occur once; the alphabetically first pair is merged first.
    tok = tk.train(["xy cd ab"], vocab_size=260 + 7 + 1)
    assert tok.pieces[260:] == ["a", "b", "c", "d", "x", "y", "▁", "ab"]


def test_emoji_are_single_pieces(tok):
    for emoji in ["🎱", "🔮", "✨", "🌟"]:
        assert emoji in tok.pieces
        assert tok.encode(emoji) == [tok.pieces.index(emoji)]


def test_unseen_characters_fall_back_to_utf8_bytes(tok):
    assert tok.encode("é") == [4 + 0xC3, 4 + 0xA9]
    assert tok.encode("😀") == [4 + b for b in "😀".encode()]
    assert tok.decode(tok.encode("é😀")) == "é😀"


def test_a_literal_lower_one_eighth_block_is_three_bytes_not_a_space(tok):
    assert tok.encode(" ") == [tok.pieces.index("▁")]
    assert tok.encode("▁") == [4 + 0xE2, 4 + 0x96, 4 + 0x81]
    assert tok.decode(tok.encode("a▁ b")) == "a▁ b"


def test_encoding_merges_known_words(tok):
    ids = tok.encode("Q: Will I pass my exams?\nA:")
    assert tok.decode(ids) == "Q: Will I pass my exams?\nA:"
    assert len(ids) < 0.6 * len("Q: Will I pass my exams?\nA:")
    assert ids[-1] == tok.pieces.index("\nA:") and ids[0] == tok.pieces.index("Q:")
    assert all(i >= tk.FIRST_NORMAL_ID for i in ids)


def test_highest_score_merges_first_and_ties_go_leftmost():
    # "bc" outranks "ab": "abc" -> a + bc, then a + bc -> "abc" exists.
    tok = handmade(["a", "b", "c", "bc", "ab", "abc"], [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    ids = {p: i for i, p in enumerate(tok.pieces)}
    assert tok.encode("abc") == [ids["abc"]]
    assert tok.encode("abab") == [ids["ab"], ids["ab"]]
    # Equal scores: the leftmost pair of "aaa" merges, leaving "aa" + "a".
    tok = handmade(["a", "aa"], [-1.0, -2.0])
    assert tok.encode("aaa") == [261, 260]
    tok = handmade(["a", "b", "ab", "ba"], [-1.0, -2.0, -3.0, -3.0])
    assert tok.encode("bab") == [263, 261]  # "ba" is leftmost at equal score
    assert tok.encode("aba") == [262, 260]


@HYPOTHESIS
@given(st.text())
def test_round_trip_on_any_text(text):
    tok = _shared_tok()
    assert tok.decode(tok.encode(text)) == text


@HYPOTHESIS
@given(
    st.text(alphabet=st.sampled_from(sorted(set("".join(CORPUS))) + [" ", "▁", "é", "\ud800"]), max_size=60)
)
def test_heap_encoding_equals_the_naive_reference(text):
    tok = _shared_tok()
    ids = tok.encode(text)
    assert ids == naive_encode(tok, text)
    assert tok.decode(ids) == text


def test_lone_surrogates_round_trip(tok):
    assert tok.decode(tok.encode("a\ud800b")) == "a\ud800b"


def test_decode_skips_control_tokens_and_rejects_unknown_ids(tok):
    ids = tok.encode("Will I")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "Will I"
    assert tok.decode(np.array(ids)) == "Will I"
    with pytest.raises(InputError, match="token id 360 is outside the vocabulary"):
        tok.decode([360])


def test_encoding_is_fast_enough_for_dataset_generation(tok):
    import time

    texts = [
        f"Q: Will I {w} my exams in {n} days? 🔮\nA:" for n in range(40) for w in ("pass", "ace", "fail")
    ]
    start = time.perf_counter()
    for _ in range(20):
        for text in texts:
            tok.encode(text)
    rate = 20 * len(texts) / (time.perf_counter() - start)
    assert rate > 2000, f"{rate:.0f} encodes/s"


def test_save_load_round_trip_and_digest_is_the_file_sha256(tok, tmp_path):
    path = str(tmp_path / "tok.json")
    tok.save(path)
    raw = open(path, "rb").read()
    assert tok.digest == hashlib.sha256(raw).hexdigest()
    assert raw == tok.to_bytes() and raw.endswith(b"}\n") and "🎱".encode() in raw
    doc = json.loads(raw)
    assert (doc["format"], doc["version"], doc["model"], doc["add_space_prefix"]) == (
        tk.FORMAT,
        1,
        "llama",
        False,
    )
    back = tk.Tokenizer.load(path)
    assert (back.pieces, back.scores, back.token_types) == (tok.pieces, tok.scores, tok.token_types)
    assert back.digest == tok.digest
    assert back.encode("Can I win?") == tok.encode("Can I win?")


def _write(tmp_path, doc, raw=None):
    path = tmp_path / "bad.json"
    if raw is None:
        raw = (json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    path.write_bytes(raw)
    return str(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="other"), "format: is 'other', expected 'm8b-spm-bpe'"),
        (lambda d: d.update(version=2), "version: is 2, this code reads 1"),
        (lambda d: d.pop("scores"), "scores: missing"),
        (lambda d: d.update(vocab_size=9), "vocab_size: is 9 but there are 360 pieces"),
        (lambda d: d["pieces"].__setitem__(300, d["pieces"][301]), "appears twice"),
        (lambda d: d["pieces"].__setitem__(1, "<bos>"), "id 1 must be '<s>' with type 3"),
        (lambda d: d["pieces"].__setitem__(300, "x<s"), "multi-character pieces may not hold < or >"),
        (lambda d: d["scores"].__setitem__(300, 0.1), "must be finite float32 values"),
        (lambda d: d["token_types"].__setitem__(300, 3), "id 300 has type 3"),
        (lambda d: d.update(pieces="abc"), "pieces: must be a list of str"),
    ],
)
def test_load_rejects_bad_files(tok, tmp_path, mutate, message):
    doc = json.loads(tok.to_bytes())
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(InputError, match=f"^{tmp_path / 'bad.json'}: .*") as error:
        tk.Tokenizer.load(path)
    assert message in str(error.value)


def test_load_rejects_missing_garbled_and_non_canonical_files(tok, tmp_path):
    with pytest.raises(InputError, match="tokenizer file not found"):
        tk.Tokenizer.load(str(tmp_path / "absent.json"))
    with pytest.raises(InputError, match="not a tokenizer JSON file"):
        tk.Tokenizer.load(_write(tmp_path, None, b"\xff\xfe"))
    with pytest.raises(InputError, match="not in canonical form"):
        tk.Tokenizer.load(_write(tmp_path, None, json.dumps(json.loads(tok.to_bytes()), indent=1).encode()))


def test_train_rejects_a_vocabulary_too_small_for_the_characters():
    with pytest.raises(InputError, match="cannot hold the 5 distinct characters"):
        tk.train(["ab cd"], vocab_size=263)


def test_ids_match_llama_cpp_exactly(tok, tmp_path):
    """The real thing: a vocabulary-only GGUF of this tokenizer, tokenized by llama.cpp."""
    path = str(tmp_path / "vocab.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(8)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tok.pieces)
    writer.add_token_scores(tok.scores)
    writer.add_token_types(tok.token_types)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_unk_token_id(tok.unk_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_add_space_prefix(False)
    writer.add_tensor("token_embd.weight", np.zeros((tok.vocab_size, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llama = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)

    rng = random.Random(0)
    alphabet = sorted(set("".join(CORPUS))) + ["é", "😀", "\t", "ab"]
    texts = [*CORPUS, "", " ", "  ", "Q:  Will I?\n\nA:"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    for text in texts:
        assert tok.encode(text) == llama.tokenize(text.encode(), add_bos=False, special=False), repr(text)


_SHARED: list[tk.Tokenizer] = []


def _shared_tok() -> tk.Tokenizer:
    # hypothesis tests cannot take function-scoped fixtures; train once per module instead.
    if not _SHARED:
        _SHARED.append(tk.train(CORPUS * 3, vocab_size=360))
    return _SHARED[0]
