import itertools

import numpy as np
import pytest

from data import canonical_trie, generate, teacher


@pytest.fixture(scope="module")
def tok():
    return generate.train_tokenizer()


@pytest.fixture(scope="module")
def trie(tok):
    return canonical_trie.CanonicalTrie(tok)


def _walk(trie, logits_of):
    """Decode greedily under the trie, logits_of(step) giving the unconstrained logits."""
    written = []
    for step in itertools.count():
        written.append(int(np.argmax(trie.mask(logits_of(step), written))))
        if not trie.allowed(written):
            return written


def test_every_path_through_the_trie_is_canonical_and_every_canonical_reply_is_a_path(tok, trie):
    for a in range(len(teacher.ANSWERS)):
        seq = tok.encode(teacher.completion_text(a)) + [tok.eos_id]
        for t in range(len(seq)):
            assert seq[t] in trie.allowed(seq[:t])
        assert trie.allowed(seq) == []
    rng = np.random.default_rng(0)
    for _ in range(300):  # random logits: the walk still spells one of the 20 replies
        reply = _walk(trie, lambda step: rng.normal(size=tok.vocab_size) * 10)
        assert teacher.canonical_reply(reply, tok) is not None


def test_a_model_that_wants_a_hybrid_gets_a_canonical_reply(tok, trie):
    # Logits that spell "It is decidedly" then push to "no. 🎱": the trie keeps it on one answer.
    hybrid = tok.encode(" It is decidedly no. 🎱") + [tok.eos_id]

    def logits_of(step):
        out = np.zeros(tok.vocab_size)
        out[hybrid[min(step, len(hybrid) - 1)]] = 5.0
        return out

    assert teacher.canonical_reply(hybrid, tok) is None
    assert teacher.canonical_reply(_walk(trie, logits_of), tok) == 1


def test_mask_refuses_a_finished_or_foreign_reply(tok, trie):
    done = tok.encode(teacher.completion_text(0)) + [tok.eos_id]
    for written in (done, [tok.bos_id]):
        with pytest.raises(ValueError):
            trie.mask(np.zeros(tok.vocab_size), written)


def test_gbnf_lists_exactly_the_canonical_replies():
    grammar = canonical_trie.gbnf()
    assert grammar.startswith("root ::= ")
    alternatives = grammar[len("root ::= ") :].strip().split(" | ")
    assert [a[1:-1] for a in alternatives] == [teacher.completion_text(a) for a in range(20)]
