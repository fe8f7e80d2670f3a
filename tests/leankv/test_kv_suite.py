import random

import pytest
import torch
from transformers import LlamaConfig

from leanstack.errors import LeanstackError
from leanstack.leankv import LeanKVCache, LeanKVConfig
from leanstack.leankv.corpus import documents, manifest
from leanstack.leankv.evaluate import fp16_bytes
from leanstack.leankv.peers import KIVICache
from leanstack.leankv.retrieval import answer_item, make_item, make_qa_item
from leanstack.leankv.suite import DocumentResult, SuiteSettings, summarise
from leanstack.llm.shapes import attention_shape


def test_corpus_is_split_once_into_disjoint_halves_of_every_kind():
    entries = manifest()
    assert len(entries) >= 8
    cal, test = documents("calibration"), documents("test")
    assert len(cal) + len(test) == len(entries) == len(documents("all"))
    assert not {d.name for d in cal} & {d.name for d in test}
    assert {d.text for d in cal}.isdisjoint({d.text for d in test})
    kinds = {"prose", "technical manual", "source code", "questions and answers", "list",
             "table"}
    assert {d.kind for d in cal} == {d.kind for d in test} == kinds
    for e in entries:
        assert e["source"] and e["licence"] and e["extract"]
    for d in cal + test:
        assert len(d.text) > 3000
    with pytest.raises(LeanstackError, match="unknown corpus split"):
        documents("train")


class CharTokenizer:
    """One token per character (enough to place needles and decode answers)."""

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = [ord(c) % 128 for c in text]

        class Enc:
            input_ids = torch.tensor([ids]) if return_tensors else ids
        return Enc()

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_items_hide_each_key_at_its_depth():
    tok = CharTokenizer()
    hay = "abcdefghij" * 50
    item = make_item(tok, hay, 400, (0.1, 0.5, 0.9), random.Random(1))
    assert item.kind == "multikey" and len(item.answers) == 3
    body = item.context
    for colour, key, depth in zip(("red", "blue", "green"), item.answers, (0.1, 0.5, 0.9),
                                  strict=True):
        at = body.index(f"The {colour} pass key is {key}.")
        assert abs(at / len(body) - depth) < 0.1
    assert [q.split()[3] for q in item.questions] == ["red", "blue", "green"]
    single = make_item(tok, hay, 400, (0.3,), random.Random(1))
    assert single.kind == "passkey" and single.questions[0].endswith("The pass key is")
    with pytest.raises(LeanstackError, match="1 to 4 keys"):
        make_item(tok, hay, 400, (0.1,) * 5, random.Random(1))


def test_qa_items_ask_few_shot_which_words_follow_a_unique_quote_of_the_document():
    tok = CharTokenizer()
    doc = " ".join(f"w{i}" for i in range(300))  # every word distinct
    item = make_qa_item(tok, doc, 900, (0.1, 0.5, 0.8))
    assert item.kind == "qa" and item.context.endswith(doc[:900])
    question = item.questions[0]
    assert question.count('"') == 5  # two worked quotes, then the one the model completes
    quote = question.rsplit('"', 1)[1]
    words = doc[:900].split()
    at = words.index(quote.split()[0])
    assert quote.split() == words[at:at + 6] and item.answers == (words[at + 6],)
    assert abs(at / len(words) - 0.8) < 0.05
    worked = question.split("\n")[3].strip('"')  # a worked example is the real text
    assert len(worked.split()) == 7 and worked in doc
    # a repeated document has no unique quote; too short a context is refused
    with pytest.raises(LeanstackError, match="no quote in this context is unique"):
        make_qa_item(tok, "the same words again and again " * 40, 900, (0.1, 0.5, 0.8))
    with pytest.raises(LeanstackError, match="at least 21 words"):
        make_qa_item(tok, doc, 40, (0.1, 0.5, 0.8))


def test_a_qa_answer_counts_with_any_whitespace_and_not_when_wrong(tiny_llama, monkeypatch):
    from leanstack.leankv import retrieval

    tok = CharTokenizer()
    item = make_qa_item(tok, " ".join(f"w{i}" for i in range(300)), 900, (0.1, 0.5, 0.8))
    said = {"text": ""}
    monkeypatch.setattr(retrieval, "_greedy", lambda *a: [ord(c) for c in said["text"]])
    (answer,) = item.answers
    from transformers import DynamicCache

    def ask(text):
        said["text"] = text
        return answer_item(tiny_llama, tok, item, lambda: DynamicCache(config=tiny_llama.config))
    assert ask(f"\n {answer}\"\n\"w") == [True]  # the model closes the quote, as shown
    assert ask(f"\n {answer} w") == [True]
    assert ask(f"\n {answer.rstrip('.,')}.\" w") == [True]
    assert ask(f"\n {answer}x w") == [False]
    assert ask(f" w0 {answer}") == [False]  # said somewhere, not next: not recalled


def test_exact_cache_answers_like_dense_with_the_question_after_compression(tiny_llama):
    """With every token at fp32 the cache must answer exactly as the dense one, whether the
    question comes after the context (a deep copy per question) or with it."""
    from transformers import DynamicCache

    tok = CharTokenizer()
    item = make_item(tok, "the grass is green. " * 20, 200, (0.2, 0.8), random.Random(2))
    cfg = LeanKVConfig.preset("exact", group=16)
    for aware in (False, True):
        with torch.no_grad():
            ours = answer_item(tiny_llama, tok, item, lambda: LeanKVCache(tiny_llama.config, cfg),
                               aware)
            dense = answer_item(tiny_llama, tok, item,
                                lambda: DynamicCache(config=tiny_llama.config), aware)
        assert ours == dense and len(ours) == 2


def test_summary_reports_the_mean_and_the_worst_document():
    def doc(name, ppl, kl, top1, comp, ret):
        return DocumentResult(name, "prose", 10, 10.0, 10.0, ppl, kl, top1, comp, 1, 1,
                              comp, 1.0, ret)

    s = summarise([doc("a", 1.0, 0.01, 0.9, 4.0, 1.0), doc("b", 3.0, 0.005, 0.8, 5.0, 0.5)])
    assert s["mean"]["ppl_increase_pct"] == pytest.approx(2.0)
    assert s["worst"]["ppl_increase_pct"] == {"value": 3.0, "document": "b"}
    assert s["worst"]["kl"] == {"value": 0.01, "document": "a"}
    assert s["worst"]["top1_agreement"]["document"] == "b"
    assert s["worst"]["compression"] == {"value": 4.0, "document": "a"}
    assert s["worst"]["retrieval"] == {"value": 0.5, "document": "b"}


def test_qa_questions_count_in_the_progress_of_a_document():
    assert SuiteSettings(qa=True).steps_per_document() == SuiteSettings().steps_per_document() + 2


def test_suite_settings_reject_bad_numbers():
    with pytest.raises(LeanstackError, match="trials"):
        SuiteSettings(trials=-1)
    with pytest.raises(LeanstackError, match="multikeys"):
        SuiteSettings(multikeys=5)
    with pytest.raises(LeanstackError, match="lengths"):
        SuiteSettings(lengths=(8,))
    assert SuiteSettings(decode=10, lengths=(100, 200), trials=2).steps_per_document() == \
        9 + 2 * 2 * 2 * 4


def test_one_head_dim_for_every_consumer():
    # head_dim given and different from hidden / heads, then absent
    given = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=32, num_hidden_layers=3)
    derived = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=3)
    derived.head_dim = None
    for cfg, dim in ((given, 32), (derived, 16)):
        shape = attention_shape(cfg)
        assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (3, 2, dim)
        assert LeanKVCache(cfg, LeanKVConfig.preset("exact", group=16)).head_dim == dim
        assert fp16_bytes(cfg, tokens=5) == 5 * 3 * 2 * dim * 2 * 2
        KIVICache(cfg, bits=4, group=16)  # group must divide the same head_dim
    with pytest.raises(LeanstackError, match="KIVI"):
        KIVICache(derived, bits=4, group=32)
    with pytest.raises(LeanstackError, match="model.config"):
        attention_shape(object())
