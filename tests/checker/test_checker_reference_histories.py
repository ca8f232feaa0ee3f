"""Every shared reference history (Jepsen runs with known verdicts) gets its verdict.

These histories were not written by anyone on this project, so agreeing
with their verdicts is evidence the checker is right, not just
self-consistent. The etcd logs are single registers; the kv histories need
partitioning by key.
"""

from __future__ import annotations

import pytest
from checker_test_support import expected_verdicts, shared_histories_directory

from jepsen_tests.checker import Verdict, check_events, model_named, read_history

FORMAT_AND_MODEL_OF_DIRECTORY = {"etcd": ("jepsen-log", "register"), "kv": ("jepsen-edn", "kv")}


def _reference_cases() -> list:
    directory = shared_histories_directory()
    if not directory.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=f"no shared histories at {directory}"))]
    return [pytest.param(path, verdict, id=path) for path, verdict in sorted(expected_verdicts().items())]


@pytest.mark.parametrize(("relative_path", "linearizable"), _reference_cases())
def test_reference_history_gets_its_known_verdict(relative_path: str, linearizable: bool) -> None:
    history_format, model_name = FORMAT_AND_MODEL_OF_DIRECTORY[relative_path.split("/")[0]]
    events = read_history(shared_histories_directory() / relative_path, history_format)
    result = check_events(events, model_named(model_name), budget_seconds=30)
    expected = Verdict.LINEARIZABLE if linearizable else Verdict.NOT_LINEARIZABLE
    assert result.verdict is expected, result.describe()
    if not linearizable:
        assert result.failure is not None
        assert result.failure.operation not in result.failure.longest_prefix


def test_every_shared_history_file_has_a_verdict() -> None:
    directory = shared_histories_directory()
    if not directory.is_dir():
        pytest.skip(f"no shared histories at {directory}")
    on_disk = {
        str(path.relative_to(directory))
        for path in directory.rglob("*")
        if path.is_file() and path.suffix in (".log", ".txt")
    }
    assert on_disk == set(expected_verdicts())
