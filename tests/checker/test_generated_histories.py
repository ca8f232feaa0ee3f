"""The generator of large kv histories: its verdicts are the checker's, at a small size.

generated_histories.py builds histories that are linearizable by
construction, or that hold one certain anomaly on one named key. These
small ones (a few clients, a few hundred operations) show the two agree:
the plain ones check linearizable, each anomaly is caught on the key it
was planted on, and the written EDN reads back as the same events. The
large ones (50 clients, 2,000 operations) are measured by
bench/porcupine_compare.py, not here.
"""

from __future__ import annotations

import pytest

from jepsen_tests.checker import Verdict, check_events, model_named, read_history
from jepsen_tests.checker.generated_histories import (
    ANOMALIES,
    generate_kv_history,
    write_jepsen_edn,
)

SEEDS = range(1, 6)
SMALL = {"clients": 6, "operations": 240, "keys": 3}


@pytest.mark.parametrize("indeterminate_share", [0.0, 0.1])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_history_built_from_a_sequential_run_is_linearizable(seed: int, indeterminate_share: float) -> None:
    history = generate_kv_history(seed, indeterminate_share=indeterminate_share, **SMALL)
    assert history.linearizable and history.anomalous_key is None
    result = check_events(history.events, model_named("kv"), budget_seconds=60)
    assert result.verdict is Verdict.LINEARIZABLE, history.description


@pytest.mark.parametrize("anomaly", ANOMALIES)
@pytest.mark.parametrize("indeterminate_share", [0.0, 0.1])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_planted_anomaly_is_caught_on_its_key(seed: int, indeterminate_share: float, anomaly: str) -> None:
    history = generate_kv_history(seed, anomaly=anomaly, indeterminate_share=indeterminate_share, **SMALL)
    assert not history.linearizable
    result = check_events(history.events, model_named("kv"), budget_seconds=60)
    assert result.verdict is Verdict.NOT_LINEARIZABLE, history.description
    assert result.failure is not None and result.failure.key == history.anomalous_key


def test_the_history_has_the_size_asked_for_and_is_the_same_for_a_seed() -> None:
    history = generate_kv_history(3, clients=50, operations=400, keys=10)
    assert sum(1 for event in history.events if event.type == "invoke") == 400
    assert {event.process for event in history.events} == set(range(50))
    assert {event.key for event in history.events} == {str(key) for key in range(10)}
    assert history.events == generate_kv_history(3, clients=50, operations=400, keys=10).events


def test_the_written_edn_reads_back_as_the_same_events(tmp_path) -> None:
    history = generate_kv_history(2, anomaly="lost-append", indeterminate_share=0.1, **SMALL)
    path = tmp_path / "history.txt"
    write_jepsen_edn(path, history.events)
    read_back = read_history(path, "jepsen-edn")
    assert [(e.process, e.type, e.function, e.key, e.value) for e in read_back] == [
        (e.process, e.type, e.function, e.key, e.value) for e in history.events
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"clients": 0}, "at least 1"),
        ({"anomaly": "lost-write"}, "unknown anomaly"),
        ({"indeterminate_share": 2.0}, "between 0 and 1"),
        ({"operations": 1, "anomaly": "lost-append"}, "no get"),
    ],
)
def test_bad_parameters_are_a_clear_error(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_kv_history(1, **arguments)
