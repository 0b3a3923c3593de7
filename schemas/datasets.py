"""The five conformed datasets of DTS §3 and the IWRS list of §5: the facts the pipeline needs
around each one's pandera model (file name, key, which header columns are required, unit
alternatives), and the study's reason codes, instruments and visits.

The models themselves are in `schemas/models.py`, imported the first time a dataset's model or
columns are asked for: pandera and polars take half a second to import, and a run that finds
nothing new needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import pandera.polars as pa

SCHEMAS_DIR = Path(__file__).resolve().parent

# DTS §6: a record carries the first reason of this order that applies.
REASON_ORDER: tuple[str, ...] = (
    "UNPARSEABLE",
    "MISSING_REQUIRED",
    "OUT_OF_RANGE",
    "UNKNOWN_SUBJECT",
    "CONFLICTING_DUPLICATE",
    "INVALID_VISIT",
    "INCONSISTENT",
)

# DTS §7: delivered columns with these names never land anywhere.
PERSONAL_DATA_COLUMNS: frozenset[str] = frozenset(
    {"name", "first_name", "last_name", "initials", "date_of_birth", "dob", "mrn", "address", "phone",
     "email", "ssn", "nhs_number"}
)

LB_TO_KG = 0.45359237


@cache
def instruments() -> dict[str, dict[str, Any]]:
    with open(SCHEMAS_DIR / "instruments.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["instruments"]


@cache
def visits() -> dict[str, dict[str, Any]]:
    with open(SCHEMAS_DIR / "visits.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["visits"]


def _visits_of_kind(*kinds: str) -> list[str]:
    return [v for v, spec in visits().items() if spec["kind"] in kinds]


SESSION_VISITS = _visits_of_kind("PREPARATION", "DOSING", "INTEGRATION")
DOSING_VISITS = _visits_of_kind("DOSING")
ASSESSMENT_VISITS = sorted({v for spec in instruments().values() for v in spec["visits"]},
                           key=list(visits()).index)
# How a delivered text value is read, by the model's column type.
KIND_BY_DTYPE: dict[str, str] = {"Date": "date", "Time": "time", "Int64": "integer", "Float64": "decimal",
                                 "String": "text"}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # text, date, time, integer, decimal
    required: bool
    description: str


@dataclass(frozen=True)
class Dataset:
    """A conformed dataset: its model, the file it arrives in, and its key."""

    name: str
    file: str
    # the pandera model: its class, or its name in schemas/models.py (imported when first needed)
    model_ref: type[pa.DataFrameModel] | str
    key: tuple[str, ...]
    # Columns a file may lack without being rejected (their values are then missing).
    header_optional: frozenset[str] = frozenset()
    # A column that may arrive in another unit instead: name -> (delivered name, factor).
    alternatives: dict[str, tuple[str, float]] = field(default_factory=dict)
    # Delivered by one site, about its own participants (the IWRS list spans every site).
    site_scoped: bool = True

    @property
    def model(self) -> type[pa.DataFrameModel]:
        if isinstance(self.model_ref, str):
            from schemas import models

            return getattr(models, self.model_ref)
        return self.model_ref

    @cached_property
    def columns(self) -> list[Column]:
        schema = self.model.to_schema()
        return [Column(name, KIND_BY_DTYPE[str(col.dtype)], not col.nullable, col.description or "")
                for name, col in schema.columns.items()]

    @property
    def header_required(self) -> list[str]:
        return [c.name for c in self.columns if c.name not in self.header_optional]


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("participants", "participants.csv", "Participants", ("subject_id",),
                header_optional=frozenset({"withdrawal_date", "withdrawal_reason"}),
                alternatives={"weight_kg": ("weight_lb", LB_TO_KG)}),
        Dataset("sessions", "sessions.csv", "Sessions", ("subject_id", "visit"),
                alternatives={"weight_kg": ("weight_lb", LB_TO_KG)}),
        Dataset("vitals", "vitals.csv", "Vitals", ("subject_id", "visit", "timepoint")),
        Dataset("assessment_items", "assessments.csv", "AssessmentItems",
                ("subject_id", "visit", "instrument", "item"), header_optional=frozenset({"rater_id"})),
        Dataset("adverse_events", "adverse_events.csv", "AdverseEvents", ("subject_id", "ae_id"),
                header_optional=frozenset({"end_date"})),
    )
}

RANDOMIZATION = Dataset("randomization", "randomization.csv", "Randomization", ("subject_id",), site_scoped=False)


def datasets_of(format: str) -> dict[str, Dataset]:
    """The conformed datasets a transfer of this format delivers."""
    return {RANDOMIZATION.name: RANDOMIZATION} if format == "iwrs" else DATASETS
