"""Sentence splitting, the cap on generated answers, citation checks and extractive answers."""

from __future__ import annotations

import numpy as np

from leanstack.chipexpert.extractive import (
    Passage,
    candidates,
    command_name,
    extract_answer,
    passage_sentences,
    rank,
)
from leanstack.chipexpert.grounding import (
    MAX_ANSWER_WORDS,
    cap_sentences,
    check_answer,
    cited_numbers,
    drop_unshown_citations,
    loop_start,
    split_sentences,
)


def test_sentences_keep_their_citation_and_join_wrapped_lines() -> None:
    text = "Use opt_clean [1]. It removes\nunused wires. [2] Then run stat.\n\nA new paragraph"
    assert split_sentences(text) == ["Use opt_clean [1].", "It removes unused wires. [2]",
                                     "Then run stat.", "A new paragraph"]


def test_cap_drops_loops_and_near_repeats_and_keeps_three() -> None:
    loop = "Run opt_clean [1]. " * 20 + "run opt_clean again [1]. It cleans. Use stat. Four."
    assert cap_sentences(loop) == "Run opt_clean [1]. It cleans. Use stat."
    assert cap_sentences("This pass only works on selected modules. This pass only works only "
                         "on selected modules.") == "This pass only works on selected modules."
    assert cap_sentences("Done. And then the") == "Done."  # unfinished tail
    assert cap_sentences("no full stop at all") == "no full stop at all"
    long = " ".join(f"w{i}" for i in range(200))
    assert len(cap_sentences(long).split()) == MAX_ANSWER_WORDS + 1  # + the ellipsis


def test_a_loop_within_a_sentence_is_cut_where_it_starts() -> None:
    looping = "[1] -s top [2] -chparam name value " + " ".join(f"-top [{i}]" for i in range(4, 40))
    assert loop_start(looping) == looping.index("-top")
    assert cap_sentences(looping) == "[1] -s top [2] -chparam name value"
    assert loop_start("Use opt_clean [1]. It removes unused cells and wires from the design, "
                      "then run stat to see the cells and wires that are left.") is None
    assert cap_sentences("the " * 30) == ""


def test_citations_of_passages_not_shown_are_taken_out() -> None:
    text, invalid = drop_unshown_citations("See [1] and [4][2], also [37].", {1, 2, 3})
    assert text == "See [1] and[2], also." and invalid == [4, 37]
    assert drop_unshown_citations("opt_clean [1].", set()) == ("opt_clean.", [1])
    assert cited_numbers(text) <= {1, 2, 3}


def test_the_check_reports_invented_citations_that_the_cap_removed() -> None:
    # a lone leading "[4]" is a sentence of no words, and a loop is cut away: neither is in
    # the answer, yet both are numbers the model invented
    text, invalid = check_answer("[4] Use opt_clean [1]. It removes wires. "
                                 + " ".join(f"-top [{i}]" for i in range(5, 20)), {1, 2, 3})
    assert text == "Use opt_clean [1]. It removes wires." and invalid == list(range(4, 20))
    assert check_answer("Use opt_clean [2].", {1, 2, 3}) == ("Use opt_clean [2].", [])


def test_paragraph_in_lower_case_continues_the_example_before_it() -> None:
    text = ("Example:\n\n.measure tran tdiff TRIG v(1) VAL=0.5 RISE=1\n\nmeasures the time "
            "difference. Next sentence.")
    assert passage_sentences(text) == ["Example:", ".measure tran tdiff TRIG v(1) VAL=0.5 "
                                       "RISE=1 measures the time difference.", "Next sentence."]


def test_command_names_and_candidates() -> None:
    assert command_name("opt_clean -- remove unused cells and wires") == "opt_clean"
    assert command_name("15.4.5 Trig Targ") is None
    found = candidates([Passage(1, "opt_clean -- remove unused cells and wires",
                                "opt_clean [options]\n\nThis pass removes unused wires. Ok."),
                        Passage(2, "2.1 Title", "This pass removes unused wires. More here.")])
    assert [(c.n, c.text) for c in found] == [
        (1, "opt_clean -- remove unused cells and wires"),
        (1, "This pass removes unused wires.")]  # too short: "opt_clean [options]", "Ok.",
    # "More here."; a sentence seen in passage 1 is not offered again for passage 2


def test_extractive_answer_by_words_alone_and_with_embeddings() -> None:
    passages = [Passage(1, "1.1 Temperature", "The default is 27 degrees. Use .temp to set the "
                        "circuit temperature in degrees Celsius."),
                Passage(2, "delete -- delete objects", "Deletes the selected objects from the "
                        "design.")]
    question = "How do I set the circuit temperature?"
    assert extract_answer(question, passages, None) == \
        "Use .temp to set the circuit temperature in degrees Celsius. [1]"

    def one_hot(texts: list[str]) -> np.ndarray:  # the question is "most similar" to delete
        return np.array([[1.0, 0.0] if ("Deletes" in t or "temperature?" in t) else [0.0, 1.0]
                         for t in texts])

    ranked = rank(question, passages, one_hot)
    assert ranked[0].n == 2  # the embedding outweighs the word overlap here
    assert extract_answer("zzz", [Passage(1, "x", "ab")], None) == ""


def test_answer_names_the_command_and_cites_each_passage_once() -> None:
    passages = [Passage(1, "opt_clean -- remove unused cells and wires",
                        "This pass identifies unused wires and cells. It removes unused wires "
                        "and cells from the design.")]
    answer = extract_answer("which pass identifies unused wires", passages, None)
    assert answer == "opt_clean: This pass identifies unused wires and cells. [1]"
    both = extract_answer("remove unused wires and cells", passages, None)
    assert both.startswith("opt_clean") and both.endswith("[1]") and both.count("[1]") == 1
