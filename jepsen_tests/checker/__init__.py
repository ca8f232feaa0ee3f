"""The linearizability checker: histories in, a verdict and its reasons out.

history.py reads and writes histories; models.py and versioned_models.py
hold the sequential specifications, and registry.py names them all;
linearizability.py searches for a linearization, and timeline.py draws a
failing key. docs/checker.md explains how it works.
"""

from .history import (
    HISTORY_FORMATS,
    Event,
    HistoryError,
    HistoryWriter,
    Operation,
    operations_from_events,
    read_history,
)
from .linearizability import (
    CheckResult,
    Failure,
    KeyResult,
    Verdict,
    check_events,
    check_operations,
)
from .models import Model
from .registry import MODELS, model_named

__all__ = [
    "HISTORY_FORMATS",
    "MODELS",
    "CheckResult",
    "Event",
    "Failure",
    "HistoryError",
    "HistoryWriter",
    "KeyResult",
    "Model",
    "Operation",
    "Verdict",
    "check_events",
    "check_operations",
    "model_named",
    "operations_from_events",
    "read_history",
]
