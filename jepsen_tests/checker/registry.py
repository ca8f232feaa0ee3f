"""Every model the checker knows, by name: `--model NAME` and `model_named`.

The plain models (models.py) know values only: histories from Jepsen and
from the real-process fault suite. The versioned ones (versioned_models.py)
check the versions a replica group answers with too: the simulator's
histories, and any history that records versions.
"""

from __future__ import annotations

from .history import HistoryError
from .models import KeyValueModel, Model, RegisterModel, TableAppendModel
from .versioned_models import VersionedRegisterModel, VersionedTableAppendModel

MODELS: dict[str, Model] = {
    model.name: model
    for model in (
        RegisterModel(),
        KeyValueModel(),
        TableAppendModel(),
        VersionedRegisterModel(),
        VersionedTableAppendModel(),
    )
}


def model_named(name: str) -> Model:
    """The model of that name, or a `HistoryError` listing the known ones."""
    if name not in MODELS:
        raise HistoryError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]
