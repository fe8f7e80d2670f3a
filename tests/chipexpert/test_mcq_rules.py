"""MCQ decision rules: on hand numbers, and with the real local model on a planted item whose
right answer is obvious."""

from __future__ import annotations

import pytest

from leanstack.chipexpert.bench.mcq import RULES, ChoiceScores, pick, rule_values
from leanstack.errors import LeanstackError

HAND = ChoiceScores(choices=["ab", "abcdefgh", "abcd"], scores=[-4.0, -8.0, -6.0],
                    prior=[-1.0, -9.0, -5.0], tokens=[1, 4, 2])


def test_each_rule_on_hand_numbers() -> None:
    assert pick("raw", HAND) == 0  # -4 is the highest sum
    assert rule_values("per-char", HAND) == [-2.0, -1.0, -1.5]
    assert pick("per-char", HAND) == 1
    assert rule_values("per-token", HAND) == [-4.0, -2.0, -3.0]
    assert rule_values("pmi", HAND) == [-3.0, 1.0, -1.0]
    assert pick("pmi", HAND) == 1
    assert pick("longest", HAND) == 1


def test_bad_input_is_a_one_line_error() -> None:
    with pytest.raises(LeanstackError, match="unknown MCQ rule"):
        pick("vote", HAND)
    with pytest.raises(LeanstackError, match="one score"):
        pick("raw", ChoiceScores(["a", "b"], [-1.0], [-1.0], [1, 1]))


def test_rules_rank_a_planted_obvious_answer_first() -> None:
    import torch

    from leanstack.chipexpert.bench.runner import null_messages
    from leanstack.chipexpert.generators import LocalGenerator

    torch.set_num_threads(1)
    gen = LocalGenerator()
    messages = [{"role": "user", "content": "Which logic gate outputs 1 only when all of its "
                 "inputs are 1?\nA. AND gate\nB. a banana\nC. the Moon\nD. Tuesday\n"
                 "Reply with the letter of the correct choice."}]
    choices = ["AND gate", "a banana", "the Moon", "Tuesday"]
    options = [f"{x}. {c}" for x, c in zip("ABCD", choices, strict=True)]
    tok = gen.loaded.tokenizer
    s = ChoiceScores(choices, gen.score_choices(messages, options),
                     gen.score_choices(null_messages(messages), options),
                     [len(tok(o, add_special_tokens=False)["input_ids"]) for o in options])
    for rule in RULES:
        if rule != "longest":  # the model-free baseline is checked on hand numbers above
            assert pick(rule, s) == 0, (rule, rule_values(rule, s))
