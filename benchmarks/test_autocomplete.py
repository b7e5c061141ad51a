"""The paper's workload: every HumanEval short prompt, once, per (model, configuration, repetition).

Items are made by pytest-greenserve (``--greenserve-*`` options select models,
configurations, repetitions...). Each item measures one sample and saves it at once under
``reports/<run-id>/``; statistics and reports are written at the end of the session.
"""


def test_autocomplete(greenserve):
    sample = greenserve.measure()
    # every engine must do the same work: exactly new_tokens per request, EOS ignored
    assert sample["tokens_generated"] == sample["requests"] * sample["new_tokens"]
