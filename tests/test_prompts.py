"""The HumanEval short-prompt workload (prompts.py)."""

import pytest

from pytest_greenserve.prompts import N_PROBLEMS, load_problems, make_prompts


@pytest.fixture(scope="module")
def tokenizer():
    from pytest_greenserve.models import load_project_tokenizer

    return load_project_tokenizer()


@pytest.fixture(scope="module")
def all_prompts(tokenizer):
    return make_prompts(tokenizer)


def test_humaneval_has_164_problems_in_task_order():
    problems = load_problems()
    assert len(problems) == N_PROBLEMS == 164
    assert [task for task, _ in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(text.strip() for _, text in problems)


def test_one_prompt_per_problem_by_default(all_prompts):
    assert [p.task_id for p in all_prompts] == [task for task, _ in load_problems()]


def test_every_prompt_window_is_10_to_15_tokens(all_prompts):
    assert all(10 <= p.window_tokens <= 15 for p in all_prompts), \
        [(p.task_id, p.window_tokens) for p in all_prompts if not 10 <= p.window_tokens <= 15]
    assert all(p.text.strip() for p in all_prompts)


def test_window_text_comes_from_its_problem(tokenizer, all_prompts):
    problems = dict(load_problems())
    for p in all_prompts[:20]:
        # decoding a window of the problem's own tokens gives a substring of the problem text
        assert p.text in problems[p.task_id]


def test_prompts_are_stable_for_a_seed(tokenizer, all_prompts):
    again = make_prompts(tokenizer, seed=0)
    assert [p.text for p in again] == [p.text for p in all_prompts]


def test_prompts_change_with_the_seed(tokenizer, all_prompts):
    other = make_prompts(tokenizer, seed=1)
    changed = sum(a.text != b.text for a, b in zip(all_prompts, other))
    assert changed > len(all_prompts) // 2
    assert [p.text for p in make_prompts(tokenizer, seed=1)] == [p.text for p in other]


@pytest.mark.parametrize("n", [1, 5, 40, 164])
def test_first_n_prompts_are_a_prefix_of_the_full_list(tokenizer, all_prompts, n):
    assert make_prompts(tokenizer, n) == all_prompts[:n]


def test_prefix_stability_holds_for_other_seeds(tokenizer):
    assert make_prompts(tokenizer, 7, seed=3) == make_prompts(tokenizer, 30, seed=3)[:7]


def test_zero_prompts_is_refused(tokenizer):
    with pytest.raises(ValueError):
        make_prompts(tokenizer, 0)
