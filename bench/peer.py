"""The peer of the ingest benchmark: what a competent analyst would write instead of the pipeline.

pandas `read_csv` of every delivered file in its site's dialect, the text parsed to types with
vectorised pandas, a pandera (pandas API) `DataFrameModel` per dataset holding the same column and
cross-field checks as `schemas/models.py` (types, required, codes, ranges, patterns, the rules
between columns), plus what the pipeline checks outside the models: identical duplicates collapsed,
subjects of another site or not landing, records sharing a key. Valid rows and the rows that fail
go to Parquet. No lineage beyond file and row, no reason precedence, no warehouse: it is the yardstick
the pipeline's read + validate + land stages are compared with (`bench/run.py`).

The models are written by hand, on purpose: the peer must not borrow the pipeline's machinery. The
study metadata (visits, instruments) comes from the same YAML files the pipeline reads.

    .venv/bin/python bench/peer.py --inbox DIR --sources sources.yaml --out DIR    # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import yaml
from pandera.typing import Series

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
INSTRUMENTS: dict[str, dict[str, Any]] = yaml.safe_load((SCHEMAS / "instruments.yaml").read_text("utf-8"))[
    "instruments"]
VISITS: dict[str, dict[str, Any]] = yaml.safe_load((SCHEMAS / "visits.yaml").read_text("utf-8"))["visits"]
SESSION_VISITS = [v for v, s in VISITS.items() if s["kind"] in ("PREPARATION", "DOSING", "INTEGRATION")]
DOSING_VISITS = [v for v, s in VISITS.items() if s["kind"] == "DOSING"]
ASSESSMENT_VISITS = sorted({v for s in INSTRUMENTS.values() for v in s["visits"]})
SUBJECT = r"^S\d{2}-\d{4}$"
YN = ["Y", "N"]
# pandas has no time-of-day dtype: HH:MM values are parsed onto a date and validated as datetimes.
TIME_COLUMNS = frozenset({"start_time", "measured_time"})


def _ok(condition: pd.Series) -> pd.Series:
    """A rule over nullable columns: a null operand is another check's failure, so the rule passes."""
    return condition.fillna(True).astype(bool)


def _either_null(frame: pd.DataFrame, a: str, b: str) -> pd.Series:
    """Datetime comparisons give False, not null, against NaT: the nulls are named instead."""
    return frame[a].isna() | frame[b].isna()


def _instrument(attribute: str, frame: pd.DataFrame) -> pd.Series:
    return frame["instrument"].map({name: spec[attribute] for name, spec in INSTRUMENTS.items()})


class Participants(pa.DataFrameModel):
    subject_id: Series[str] = pa.Field(str_matches=SUBJECT)
    screening_date: Series[pa.DateTime]
    consent_date: Series[pa.DateTime]
    birth_year: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 1900, "max_value": 2010})
    sex: Series[str] = pa.Field(isin=["F", "M", "X"])
    weight_kg: Series[float] = pa.Field(in_range={"min_value": 30, "max_value": 250})
    prior_ect: Series[str] = pa.Field(isin=YN)
    status: Series[str] = pa.Field(isin=["SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED", "WITHDRAWN"])
    withdrawal_date: Series[pa.DateTime] = pa.Field(nullable=True)
    withdrawal_reason: Series[str] = pa.Field(nullable=True)

    @pa.dataframe_check
    def consent_on_or_before_screening(cls, df: pd.DataFrame) -> pd.Series:
        return _ok(df["consent_date"] <= df["screening_date"]) | _either_null(df, "consent_date", "screening_date")

    @pa.dataframe_check
    def withdrawal_when_withdrawn(cls, df: pd.DataFrame) -> pd.Series:
        withdrawn = df["status"] == "WITHDRAWN"
        return ~withdrawn | (df["withdrawal_date"].notna() & df["withdrawal_reason"].notna())

    class Config:
        strict = False


class Sessions(pa.DataFrameModel):
    subject_id: Series[str] = pa.Field(str_matches=SUBJECT)
    visit: Series[str] = pa.Field(isin=SESSION_VISITS)
    session_date: Series[pa.DateTime]
    start_time: Series[pa.DateTime]
    duration_min: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 5, "max_value": 600})
    therapist_id: Series[str] = pa.Field(str_matches=r"^T\d{3}$")
    attended: Series[str] = pa.Field(isin=YN)
    route: Series[str] = pa.Field(nullable=True, isin=["IV", "IM", "SL", "IN"])
    dose_mg: Series[float] = pa.Field(nullable=True, gt=0, le=800)
    weight_kg: Series[float] = pa.Field(nullable=True, in_range={"min_value": 30, "max_value": 250})
    infusion_min: Series[pd.Int64Dtype] = pa.Field(nullable=True, in_range={"min_value": 1, "max_value": 240})

    @pa.dataframe_check
    def dosing_values_at_attended_dosing(cls, df: pd.DataFrame) -> pd.Series:
        dosing = df["visit"].isin(DOSING_VISITS) & (df["attended"] == "Y")
        return ~dosing | (df["route"].notna() & df["dose_mg"].notna() & df["weight_kg"].notna())

    @pa.dataframe_check
    def infusion_when_iv(cls, df: pd.DataFrame) -> pd.Series:
        return (df["route"] != "IV") | df["infusion_min"].notna()

    class Config:
        strict = False


class Vitals(pa.DataFrameModel):
    subject_id: Series[str] = pa.Field(str_matches=SUBJECT)
    visit: Series[str] = pa.Field(isin=DOSING_VISITS)
    timepoint: Series[str] = pa.Field(isin=["PRE", "T40", "T120"])
    measured_time: Series[pa.DateTime]
    sbp: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 50, "max_value": 300})
    dbp: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 20, "max_value": 200})
    hr: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 20, "max_value": 250})
    spo2: Series[pd.Int64Dtype] = pa.Field(in_range={"min_value": 50, "max_value": 100})

    @pa.dataframe_check
    def dbp_below_sbp(cls, df: pd.DataFrame) -> pd.Series:
        return _ok(df["dbp"] < df["sbp"])

    class Config:
        strict = False


class AssessmentItems(pa.DataFrameModel):
    subject_id: Series[str] = pa.Field(str_matches=SUBJECT)
    visit: Series[str] = pa.Field(isin=ASSESSMENT_VISITS)
    instrument: Series[str] = pa.Field(isin=list(INSTRUMENTS))
    assessment_date: Series[pa.DateTime]
    rater_id: Series[str] = pa.Field(nullable=True, str_matches=r"^R\d{3}$")
    item: Series[pd.Int64Dtype]
    score: Series[pd.Int64Dtype]

    @pa.dataframe_check
    def rater_for_madrs(cls, df: pd.DataFrame) -> pd.Series:
        return ~_instrument("rater_required", df).fillna(False).astype(bool) | df["rater_id"].notna()

    @pa.dataframe_check
    def score_in_item_range(cls, df: pd.DataFrame) -> pd.Series:
        return _ok((df["score"] >= _instrument("item_min", df)) & (df["score"] <= _instrument("item_max", df)))

    @pa.dataframe_check
    def item_of_instrument(cls, df: pd.DataFrame) -> pd.Series:
        return _ok((df["item"] >= 1) & (df["item"] <= _instrument("items", df)))

    @pa.dataframe_check
    def instrument_taken_at_visit(cls, df: pd.DataFrame) -> pd.Series:
        allowed = {(name, visit) for name, spec in INSTRUMENTS.items() for visit in spec["visits"]}
        pairs = pd.MultiIndex.from_arrays([df["instrument"], df["visit"]])
        known = df["instrument"].isin(list(INSTRUMENTS))
        return ~known | pairs.isin(list(allowed))

    class Config:
        strict = False


class AdverseEvents(pa.DataFrameModel):
    subject_id: Series[str] = pa.Field(str_matches=SUBJECT)
    ae_id: Series[str]
    term: Series[str]
    onset_date: Series[pa.DateTime]
    end_date: Series[pa.DateTime] = pa.Field(nullable=True)
    severity: Series[str] = pa.Field(isin=["MILD", "MODERATE", "SEVERE"])
    serious: Series[str] = pa.Field(isin=YN)
    related: Series[str] = pa.Field(isin=["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"])
    outcome: Series[str] = pa.Field(
        isin=["RECOVERED", "RECOVERING", "NOT_RECOVERED", "RECOVERED_WITH_SEQUELAE", "FATAL", "UNKNOWN"])
    action: Series[str] = pa.Field(isin=["NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN"])

    @pa.dataframe_check
    def end_on_or_after_onset(cls, df: pd.DataFrame) -> pd.Series:
        return _ok(df["end_date"] >= df["onset_date"]) | _either_null(df, "end_date", "onset_date")

    class Config:
        strict = False


@dataclass(frozen=True)
class PeerDataset:
    name: str
    file: str
    model: type[pa.DataFrameModel]
    key: tuple[str, ...]


# Participants first: the other datasets need to know who lands.
DATASETS = (
    PeerDataset("participants", "participants.csv", Participants, ("subject_id",)),
    PeerDataset("sessions", "sessions.csv", Sessions, ("subject_id", "visit")),
    PeerDataset("vitals", "vitals.csv", Vitals, ("subject_id", "visit", "timepoint")),
    PeerDataset("assessment_items", "assessments.csv", AssessmentItems, ("subject_id", "visit", "instrument", "item")),
    PeerDataset("adverse_events", "adverse_events.csv", AdverseEvents, ("subject_id", "ae_id")),
)


def kinds(model: type[pa.DataFrameModel]) -> dict[str, str]:
    """Each model column's parsing rule, from its declared dtype."""
    out = {}
    for name, column in model.to_schema().columns.items():
        dtype = str(column.dtype)
        if dtype.startswith("datetime"):
            out[name] = "time" if name in TIME_COLUMNS else "date"
        elif dtype == "Int64":
            out[name] = "integer"
        elif dtype == "float64":
            out[name] = "decimal"
        else:
            out[name] = "text"
    return out


def read(path: Path, settings: dict[str, Any], columns: list[str]) -> pd.DataFrame:
    """The file as text, in the site's dialect; personal-data and unknown columns never read."""
    wanted = set(columns)
    frame = pd.read_csv(path, sep=settings["delimiter"], encoding=settings["encoding"], dtype=str,
                        keep_default_na=False, na_values=list(settings["missing_values"]),
                        usecols=lambda c: c in wanted)
    for column in columns:
        if column not in frame.columns:  # an optional column the site does not send
            frame[column] = pd.Series(pd.NA, index=frame.index, dtype="str")
    return frame[columns]


def conform(raw: pd.DataFrame, settings: dict[str, Any],
            column_kinds: dict[str, str]) -> tuple[pd.DataFrame, pd.Series]:
    """Typed columns, and which rows hold a value that does not parse (never guessed, as the DTS asks)."""
    typed = {}
    bad = pd.Series(False, index=raw.index)
    sep = settings["decimal"]
    for name, kind in column_kinds.items():
        text = raw[name]
        if kind == "text":
            typed[name] = text
            continue
        if kind == "integer":
            shaped = text.str.fullmatch(r"[+-]?[0-9]+").fillna(False).astype(bool)
            value = pd.to_numeric(text.where(shaped), errors="coerce").astype("Int64")
        elif kind == "decimal":
            pattern = rf"[+-]?([0-9]+([{sep}][0-9]*)?|[{sep}][0-9]+)"
            shaped = text.str.fullmatch(pattern).fillna(False).astype(bool)
            value = pd.to_numeric(text.where(shaped).str.replace(sep, ".", regex=False), errors="coerce")
            value = value.astype("float64")
        else:
            fmt = "%H:%M" if kind == "time" else settings["date_format"]
            value = pd.to_datetime(text, format=fmt, errors="coerce").astype("datetime64[ns]")
        bad |= text.notna() & value.isna()
        typed[name] = value
    return pd.DataFrame(typed, index=raw.index), bad


def failing_rows(model: type[pa.DataFrameModel], typed: pd.DataFrame) -> np.ndarray:
    """Rows that break any check of the model, validated lazily (every failure, not the first)."""
    try:
        model.validate(typed, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
        if cases["index"].isna().any():
            # a failure without a row is a schema-level one (wrong dtype): the peer is broken, not the data
            raise RuntimeError(f"{model.__name__}: {cases[cases['index'].isna()].to_dict('records')}") from None
        return typed.index.isin(cases["index"].astype("int64").unique())
    return np.zeros(len(typed), dtype=bool)


def ingest_transfer(folder: Path, source: str, settings: dict[str, Any], out: Path,
                    seconds: Counter[str], counts: Counter[str]) -> None:
    landing: pd.Series | None = None
    for dataset in DATASETS:
        column_kinds = kinds(dataset.model)
        start = time.perf_counter()
        raw = read(folder / dataset.file, settings, list(column_kinds))
        seconds["read"] += time.perf_counter() - start

        start = time.perf_counter()
        delivered = len(raw)
        raw = raw.drop_duplicates()  # identical records collapse to the first
        typed, bad = conform(raw, settings, column_kinds)
        bad |= failing_rows(dataset.model, typed)
        subject = typed["subject_id"]
        bad |= subject.notna() & ~subject.str.startswith(f"{source}-").fillna(False).astype(bool)
        if landing is not None:
            bad |= subject.notna() & ~subject.isin(landing)
        keyed = typed[list(dataset.key)].notna().all(axis=1)
        bad |= keyed & typed.duplicated(list(dataset.key), keep=False)
        valid = typed[~bad].assign(source_file=dataset.file, source_row=lambda f: f.index + 2)
        if dataset.name == "participants":
            landing = valid["subject_id"]
        seconds["validate"] += time.perf_counter() - start

        start = time.perf_counter()
        target = out / source / folder.name
        target.mkdir(parents=True, exist_ok=True)
        valid.to_parquet(target / f"{dataset.name}.parquet", compression="zstd", index=False)
        raw[bad].assign(source_row=lambda f: f.index + 2).to_parquet(
            target / f"{dataset.name}.quarantine.parquet", compression="zstd", index=False)
        seconds["write"] += time.perf_counter() - start
        counts["delivered"] += delivered
        counts["landed"] += len(valid)
        counts["quarantined"] += int(bad.sum())
        counts["collapsed"] += delivered - len(raw)
        if dataset.name == "assessment_items":
            counts["assessment_items_delivered"] += delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inbox", type=Path, required=True)
    parser.add_argument("--sources", type=Path, required=True, help="the registry the inbox was generated from")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    registry = yaml.safe_load(args.sources.read_text("utf-8"))["sources"]
    seconds: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    start = time.perf_counter()
    for folder in sorted(p for p in args.inbox.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        settings = registry.get(folder.parent.name)
        if settings is None or settings["format"] != "dts-csv":
            continue
        ingest_transfer(folder, folder.parent.name, settings, args.out, seconds, counts)
    # one line of JSON for bench/run.py: the whole in-process time, and its parts
    print(json.dumps({"seconds": time.perf_counter() - start, "stages": dict(seconds), "counts": dict(counts)}))


if __name__ == "__main__":
    main()
