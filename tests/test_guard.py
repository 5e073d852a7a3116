"""The windowed no-repeat n-gram guard: on token sequences, then on the tiny random model, which
loops readily."""

from __future__ import annotations

import torch
from PIL import Image

from tests.engine_helpers import generate_one, page
from worker.engine.api import GuardConfig
from worker.engine.hf import WindowedNoRepeatNGram

VOCAB = 20


def banned_after(generated: list[list[int]], n: int, window: int, prompt_len: int = 3, exempt=()):
    guard = WindowedNoRepeatNGram(n, window, exempt)
    prompt = torch.zeros(len(generated), prompt_len, dtype=torch.long)
    guard(prompt, torch.zeros(len(generated), VOCAB))  # first call records the prompt length
    ids = torch.cat([prompt, torch.tensor(generated)], dim=1)
    scores = guard(ids, torch.zeros(len(generated), VOCAB))
    return [set(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in scores]


def test_bans_the_token_that_would_repeat_an_ngram():
    # "5 6 7" then "5 6": a 3-gram "5 6 7" would repeat, so 7 is banned.
    assert banned_after([[5, 6, 7, 1, 5, 6]], n=3, window=90) == [{7}]


def test_nothing_banned_without_a_matching_prefix():
    assert banned_after([[5, 6, 7, 1, 2, 3]], n=3, window=90) == [set()]


def test_window_forgets_old_ngrams():
    seq = [5, 6, 7] + [1, 2, 3, 4, 8, 9, 10, 11] + [5, 6]
    assert banned_after([seq], n=3, window=90) == [{7}]
    assert banned_after([seq], n=3, window=6) == [set()]


def test_rows_are_independent_and_duplicates_do_not_cancel():
    rows = [[5, 6, 7, 5, 6, 9, 5, 6], [1, 2, 3, 4, 8, 2, 4, 1]]
    assert banned_after(rows, n=3, window=90) == [{7, 9}, set()]


def test_exempt_tokens_are_never_banned():
    assert banned_after([[5, 6, 7, 1, 5, 6]], n=3, window=90, exempt=[7]) == [set()]


def test_prompt_tokens_are_not_part_of_the_window():
    guard = WindowedNoRepeatNGram(2, 90)
    prompt = torch.tensor([[4, 9, 4]])
    scores = guard(prompt, torch.zeros(1, VOCAB))
    assert not torch.isinf(scores).any(), "'4 9' in the prompt must not ban 9 after 4"


def _generate(engine, guard: GuardConfig, max_tokens=48):
    from dataclasses import replace

    # A black page: the tiny random model loops on it (3 3 3 ...) when nothing stops it.
    return generate_one(engine, replace(page(Image.new("RGB", (300, 300), "black"), "tiny", max_tokens),
                                        guard=guard))


def _has_repeat_within(ids, n, window):
    for end in range(n, len(ids) + 1):
        gram = tuple(ids[end - n:end])
        start = max(0, end - window)
        seen = {tuple(ids[i:i + n]) for i in range(start, end - n)}
        if gram in seen:
            return True
    return False


def test_tiny_model_loops_without_the_guard_and_not_with_it(tiny_engine):
    off = _generate(tiny_engine, GuardConfig(0, 1))
    assert off.finish_reason == "length" and _has_repeat_within(list(off.token_ids), 3, 48), off.token_ids
    on = _generate(tiny_engine, GuardConfig(3, 48))
    assert not _has_repeat_within(list(on.token_ids), 3, 48), on.token_ids
    assert on.token_ids != off.token_ids
