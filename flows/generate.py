"""Generate a demo KAP-TRD-01 trial: one transfer per source, in each site's dialect, with controlled defects.

The generator is the pipeline's test oracle. Every defect it injects is unambiguous under the DTS's
"first reason in table order" rule (DTS §6) and is written to the report with the file line a correct
pipeline must quarantine, so an end-to-end test can compare the warehouse with the report exactly.

Columns are built vectorised as dictionary-encoded strings (integer codes into a small list of labels):
formatting, quoting and encoding then touch only the labels, and a file is one Arrow `take` per column
and one `binary_join_element_wise`, so 100 sites x 300 participants (millions of item rows) stay fast.

Every format renders the same simulated site (one table per conformed dataset, one row per record): `dts-csv`
as five files, `dts-xlsx` as one workbook (openpyxl, write-only; per-cell, so it is the slow writer), `redcap`
as the trial's REDCap raw export and data dictionary, where a row holds several records and a defect
quarantines only the record it sits in. The writer records each record's file and line for the report.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
DEFAULT_TRANSFER_TIME = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
MINUTES_BETWEEN_SOURCES = 10
ENROLMENT_SPAN_DAYS = 150
EPOCH = date(1970, 1, 1)
IWRS_FORMAT = "iwrs"
# Hidden, so that an inbox reader passes it over like any dotfile: it is no delivery.
REPORT_FILE = ".generation_report.json"
SCREENING, BASELINE = "SCR", "BL"
ARMS = ("KAP", "KET", "ACP")
KETAMINE_ARMS = ("KAP", "KET")

# DTS §6, in table order: a record's reason is the first of these that applies.
REASONS = (
    "UNPARSEABLE",
    "MISSING_REQUIRED",
    "OUT_OF_RANGE",
    "UNKNOWN_SUBJECT",
    "CONFLICTING_DUPLICATE",
    "INVALID_VISIT",
    "INCONSISTENT",
)
DUPLICATE = "IDENTICAL_DUPLICATE"  # collapsed by the pipeline, never quarantined

# Dataset names are the warehouse's (ops.quarantine / ops.loads), so the report compares with them directly.
DATASET_FILES = {
    "participants": "participants.csv",
    "sessions": "sessions.csv",
    "vitals": "vitals.csv",
    "assessment_items": "assessments.csv",
    "adverse_events": "adverse_events.csv",
}
CHILD_DATASETS = ("sessions", "vitals", "assessment_items", "adverse_events")
DTS_COLUMNS: dict[str, tuple[str, ...]] = {
    "participants": (
        "subject_id",
        "screening_date",
        "consent_date",
        "birth_year",
        "sex",
        "weight_kg",
        "prior_ect",
        "status",
        "withdrawal_date",
        "withdrawal_reason",
    ),
    "sessions": (
        "subject_id",
        "visit",
        "session_date",
        "start_time",
        "duration_min",
        "therapist_id",
        "attended",
        "route",
        "dose_mg",
        "weight_kg",
        "infusion_min",
    ),
    "vitals": ("subject_id", "visit", "timepoint", "measured_time", "sbp", "dbp", "hr", "spo2"),
    "assessment_items": ("subject_id", "visit", "instrument", "assessment_date", "rater_id", "item", "score"),
    "adverse_events": (
        "subject_id",
        "ae_id",
        "term",
        "onset_date",
        "end_date",
        "severity",
        "serious",
        "related",
        "outcome",
        "action",
    ),
}
IWRS_COLUMNS = ("subject_id", "site_id", "arm", "randomized_on", "stratum")

# Fraction of the baseline MADRS total gone at each visit, per arm (KAP, KET, ACP): ketamine acts within
# 24 h, psychotherapy consolidates over weeks, the active placebo does little.
MADRS_REDUCTION = {
    "D1P24": (0.45, 0.35, 0.10),
    "W1": (0.42, 0.30, 0.12),
    "W2": (0.50, 0.34, 0.17),
    "W3": (0.56, 0.37, 0.21),
    "W4": (0.60, 0.38, 0.24),
    "W8": (0.57, 0.33, 0.25),
    "W12": (0.54, 0.30, 0.24),
}
# Natural data never reaches a safety threshold, so the only SAFETY_SUICIDALITY flags are injected ones.
NATURAL_ITEM_CAP = {("MADRS", 10): 3, ("PHQ9", 9): 0}
TIMEPOINTS = (("PRE", -10), ("T40", 40), ("T120", 120))
WITHDRAWAL_REASONS = (
    "Withdrew consent",
    "Lost to follow-up",
    "Adverse event, hypertension",
    "Moved away",
    "Rückzug der Einwilligung",
    "Investigator decision",
)
UNCODED_TERMS = ("jaw stiffness", "felt floaty", "cold hands", "ringing in ears", "heavy limbs")
SCORE_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
IMPOSSIBLE_DAYS = ((2, 30), (2, 31), (4, 31), (6, 31), (9, 31), (11, 31))
ALT_MISSING_SHARE = 0.15
LB_TO_KG = 0.45359237
# DTS §7: delivered columns with these names are personal data.
PERSONAL_COLUMNS = frozenset(
    {"name", "first_name", "last_name", "initials", "date_of_birth", "dob", "mrn", "address", "phone", "email",
     "ssn", "nhs_number"}
)
PERSONAL_DATA_EXTRA = ("mrn", "phone", "email", "first_name", "nhs_number")
FIRST_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Eva",
    "Felix",
    "Grace",
    "Hugo",
    "Iris",
    "Jonas",
    "Lena",
    "Marc",
)
EXTRA_COLUMNS = {
    "participants": ("comment",),
    "sessions": ("room", "comment"),
    "vitals": ("device",),
    "assessment_items": ("form_version",),
    "adverse_events": ("comment",),
}
EXTRA_VALUES = {
    "comment": ("late entry", "checked by CRA", "source verified, OK", "see paper CRF"),
    "room": ("Room 1", "Room 2", "Room 3", "Room 4"),
    "device": ("Omron M6", "Welch Allyn 6000"),
    "form_version": ("v2.1", "v2.0"),
}


# --------------------------------------------------------------------------------------------------
# Report


@dataclass
class GenerationReport:
    """What was generated and what a correct pipeline must do with it."""

    out: Path
    transfers: list[tuple[str, str, Path]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    delivered: dict[tuple[str, str], int] = field(default_factory=dict)
    expected_quarantine: list[dict[str, Any]] = field(default_factory=list)
    expected_collapsed: dict[tuple[str, str], int] = field(default_factory=dict)
    phi_values: list[str] = field(default_factory=list)
    phi_dates: list[str] = field(default_factory=list)
    phi_columns: dict[str, list[str]] = field(default_factory=dict)
    injected_flags: list[dict[str, Any]] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)

    def to_json(self, **settings: Any) -> dict[str, Any]:
        """The report as plain JSON values; tuple keys become nested {source: {dataset: n}} objects."""
        reason_counts = {code: 0 for code in REASONS}
        for record in self.expected_quarantine:
            reason_counts[record["reason_code"]] += 1
        return {
            **settings,
            "transfers": [
                {
                    "source": s,
                    "transfer_id": t,
                    "format": self.formats[s],
                    "path": p.relative_to(self.out).as_posix(),
                }
                for s, t, p in self.transfers
            ],
            "skipped": dict(self.skipped),
            "delivered": _nest(self.delivered),
            "expected_quarantine": self.expected_quarantine,
            "expected_collapsed": _nest(self.expected_collapsed),
            "reason_counts": reason_counts,
            "phi_values": self.phi_values,
            "phi_dates": self.phi_dates,
            "phi_columns": self.phi_columns,
            "injected_flags": self.injected_flags,
        }


def _nest(pairs: Mapping[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (source, dataset), value in pairs.items():
        nested.setdefault(source, {})[dataset] = value
    return nested


# --------------------------------------------------------------------------------------------------
# Study metadata


@dataclass(frozen=True)
class Instrument:
    code: str
    items: int
    item_min: int
    item_max: int
    has_total: bool
    visits: tuple[str, ...]
    rater_required: bool = False


@dataclass(frozen=True)
class VisitRule:
    code: str
    kind: str
    anchor: str
    target: int
    window_min: int
    window_max: int


@dataclass(frozen=True)
class StudyDesign:
    instruments: dict[str, Instrument]
    visits: dict[str, VisitRule]
    ae_terms: tuple[tuple[str, str], ...]  # (verbatim, preferred term)

    def nominal_day(self, code: str) -> int:
        rule = self.visits[code]
        return rule.target if rule.anchor == BASELINE else self.nominal_day(rule.anchor) + rule.target

    def visits_of_kind(self, *kinds: str) -> tuple[str, ...]:
        codes = [c for c, r in self.visits.items() if r.kind in kinds]
        return tuple(sorted(codes, key=lambda c: (self.nominal_day(c), kinds.index(self.visits[c].kind))))

    @property
    def session_visits(self) -> tuple[str, ...]:
        return self.visits_of_kind("PREPARATION", "DOSING", "INTEGRATION")

    @property
    def dosing_visits(self) -> tuple[str, ...]:
        return self.visits_of_kind("DOSING")

    @property
    def assessment_visits(self) -> tuple[str, ...]:
        taken = {v for ins in self.instruments.values() for v in ins.visits}
        return tuple(sorted(taken, key=lambda c: (self.nominal_day(c), c)))

    @property
    def blocks(self) -> list[tuple[str, str]]:
        """(visit, instrument) pairs in the order a site's export lists them."""
        return [
            (v, i) for v in self.assessment_visits for i, ins in self.instruments.items() if v in ins.visits
        ]


def load_registry(path: Path = SCHEMAS / "sources.yaml") -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["sources"])


def load_study_design(schemas: Path = SCHEMAS) -> StudyDesign:
    raw_instruments = yaml.safe_load((schemas / "instruments.yaml").read_text(encoding="utf-8"))[
        "instruments"
    ]
    raw_visits = yaml.safe_load((schemas / "visits.yaml").read_text(encoding="utf-8"))["visits"]
    instruments = {
        code: Instrument(
            code,
            int(v["items"]),
            int(v["item_min"]),
            int(v["item_max"]),
            bool(v["has_total"]),
            tuple(v["visits"]),
            bool(v.get("rater_required", False)),
        )
        for code, v in raw_instruments.items()
    }
    visits = {
        code: VisitRule(
            code, v["kind"], v["anchor"], int(v["target"]), int(v["window_min"]), int(v["window_max"])
        )
        for code, v in raw_visits.items()
    }
    with (schemas / "ae_terms.csv").open(encoding="utf-8", newline="") as handle:
        terms = tuple((row["verbatim"], row["preferred_term"]) for row in csv.DictReader(handle))
    return StudyDesign(instruments, visits, terms)


# --------------------------------------------------------------------------------------------------
# Site dialect and dictionary-encoded columns


@dataclass(frozen=True)
class Dialect:
    delimiter: str
    decimal: str
    encoding: str
    date_format: str
    missing: tuple[str, ...]
    newline: str
    weight_unit: str = "kg"  # "lb": weights are written in pounds, as `weight_lb` (DTS §3)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Dialect:
        encoding = codecs.lookup(settings.get("encoding") or "utf-8").name
        # Windows-1252 exports come from Windows tools, which end lines with CRLF.
        return cls(
            delimiter=settings.get("delimiter") or ",",
            decimal=settings.get("decimal") or ".",
            encoding=encoding,
            date_format=settings.get("date_format") or "%Y-%m-%d",
            missing=tuple(settings.get("missing_values") or [""]),
            newline="\r\n" if encoding == "cp1252" else "\n",
        )

    @property
    def empty(self) -> str:
        return self.missing[0]

    def date(self, day: int) -> str:
        return (EPOCH + timedelta(days=int(day))).strftime(self.date_format)

    def decimal1(self, tenths: int) -> str:
        return f"{int(tenths) // 10}{self.decimal}{int(tenths) % 10}"

    def weight(self, kg_tenths: int) -> str:
        """A weight given in tenths of a kilogram, written in the site's unit to one decimal."""
        if self.weight_unit == "lb":
            return self.decimal1(round(int(kg_tenths) * 0.1 / LB_TO_KG * 10))
        return self.decimal1(kg_tenths)

    def impossible_date(self, year: int, variant: int) -> str:
        """A day that does not exist (31 February), written in the site's own pattern."""
        month, day = IMPOSSIBLE_DAYS[variant % len(IMPOSSIBLE_DAYS)]
        text = self.date_format
        for token, value in (
            ("%Y", f"{year:04d}"),
            ("%y", f"{year % 100:02d}"),
            ("%m", f"{month:02d}"),
            ("%d", f"{day:02d}"),
        ):
            text = text.replace(token, value)
        return text


def _hhmm(minutes: int) -> str:
    return f"{int(minutes) // 60:02d}:{int(minutes) % 60:02d}"


class Col:
    """A text column as integer codes into labels: edits and formatting touch labels, not rows."""

    def __init__(self, codes: np.ndarray, labels: Sequence[str]) -> None:
        self.codes = np.asarray(codes, dtype=np.int32)
        self.labels = list(labels)
        self._index: dict[str, int] = {}
        for i, label in enumerate(self.labels):
            self._index.setdefault(label, i)

    def code(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.labels)
            self.labels.append(text)
        return self._index[text]

    def index_of(self, text: str) -> int | None:
        return self._index.get(text)

    def set(self, rows: np.ndarray, texts: str | Sequence[str]) -> None:
        values = [texts] * len(rows) if isinstance(texts, str) else texts
        self.codes[rows] = np.array([self.code(t) for t in values], dtype=np.int32)

    def text(self, rows: Iterable[int]) -> list[str]:
        return [self.labels[c] for c in self.codes[np.asarray(list(rows), dtype=np.int64)]]

    def is_missing(self, missing: Iterable[str]) -> np.ndarray:
        missing = set(missing)
        return np.array([label in missing for label in self.labels], dtype=bool)[self.codes]


def _col(values: np.ndarray, fmt: Callable[[Any], str], empty: str, present: np.ndarray | None = None) -> Col:
    """Encode values through their distinct formatted labels; rows not present get the empty label."""
    values = np.asarray(values)
    present = np.ones(len(values), dtype=bool) if present is None else present
    distinct, inverse = _distinct(values[present])
    codes = np.zeros(len(values), dtype=np.int32)
    codes[present] = inverse.astype(np.int32) + 1
    return Col(codes, [empty, *(fmt(v) for v in distinct.tolist())])


def _distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(return_inverse=True), by counting instead of sorting for integers of a narrow range."""
    if values.dtype.kind not in "iu" or len(values) == 0 or int(values.max()) - int(values.min()) > 1 << 20:
        return np.unique(values, return_inverse=True)
    low = int(values.min())
    seen = np.zeros(int(values.max()) - low + 1, dtype=bool)
    seen[values - low] = True
    return np.flatnonzero(seen) + low, (np.cumsum(seen) - 1)[values - low]


def _const(n: int, text: str) -> Col:
    return Col(np.zeros(n, dtype=np.int32), [text])


class Table:
    """One dataset of one transfer, with per-row bookkeeping of what was injected where."""

    def __init__(
        self,
        dataset: str,
        cols: dict[str, Col],
        subject: np.ndarray,
        num: dict[str, np.ndarray] | None = None,
    ) -> None:
        n = len(subject)
        self.dataset = dataset
        self.cols = cols
        self.subject = np.asarray(subject, dtype=np.int64)  # participant index, -1 for an unknown subject
        self.num = num or {}  # numeric shadows of columns, used to pick targets and derive values
        self.pos = np.arange(n, dtype=np.float64)  # sort key of the row in the written file
        self.origin = np.arange(n, dtype=np.int64)  # the built row a copy descends from (itself if none)
        self.alive = np.ones(n, dtype=bool)
        self.used = np.zeros(n, dtype=bool)  # row already carries a defect or flag: never stack two
        self.reason = np.full(n, "", dtype=object)
        self.reason_col = np.full(n, "", dtype=object)
        self.base_rows = n
        self.size = n  # rows in use; the arrays may hold spare, dead rows beyond it

    @property
    def capacity(self) -> int:
        return len(self.subject)

    def copy_rows(self, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Append copies of rows into spare capacity: many small batches must not copy the table each time."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.size + len(rows) > self.capacity:
            self._grow(max(len(rows), self.capacity // 2, 64))
        new = np.arange(self.size, self.size + len(rows))
        self.size += len(rows)
        for col in self.cols.values():
            col.codes[new] = col.codes[rows]
        for values in self.num.values():
            values[new] = values[rows]
        self.subject[new] = self.subject[rows]
        self.origin[new] = self.origin[rows]
        self.pos[new] = pos
        self.alive[new] = True
        return new

    def _grow(self, extra: int) -> None:
        """Spare rows are dead (alive False) until a copy fills them, so nothing else needs to know."""
        for col in self.cols.values():
            col.codes = np.concatenate([col.codes, np.zeros(extra, dtype=np.int32)])
        for name, values in self.num.items():
            self.num[name] = np.concatenate([values, np.zeros(extra, dtype=values.dtype)])
        self.subject = np.concatenate([self.subject, np.full(extra, -1, dtype=np.int64)])
        self.pos = np.concatenate([self.pos, np.zeros(extra)])
        self.origin = np.concatenate([self.origin, np.zeros(extra, dtype=np.int64)])
        self.alive = np.concatenate([self.alive, np.zeros(extra, dtype=bool)])
        self.used = np.concatenate([self.used, np.zeros(extra, dtype=bool)])
        self.reason = np.concatenate([self.reason, np.full(extra, "", dtype=object)])
        self.reason_col = np.concatenate([self.reason_col, np.full(extra, "", dtype=object)])

    def mark(self, rows: np.ndarray, reason: str, column: str) -> None:
        self.reason[rows] = reason
        self.reason_col[rows] = column
        self.used[rows] = True

    def final_order(self) -> np.ndarray:
        live = np.flatnonzero(self.alive)
        return live[np.argsort(self.pos[live], kind="stable")]


# --------------------------------------------------------------------------------------------------
# Simulation of one site's participants (format-independent)


@dataclass
class SiteTrial:
    source: str
    ids: list[str]
    export_day: int  # last local day whose data the export holds
    screening: np.ndarray
    consent: np.ndarray
    birth_year: np.ndarray
    sex: np.ndarray
    weight10: np.ndarray  # kg in tenths, so decimals never drift
    prior_ect: np.ndarray
    status: np.ndarray
    withdrawn: np.ndarray
    withdrawal: np.ndarray
    withdrawal_reason: np.ndarray
    randomized: np.ndarray
    arm: np.ndarray
    bl: np.ndarray
    stop: np.ndarray  # last day with data per participant
    day: dict[str, np.ndarray]
    done: dict[str, np.ndarray]
    bl_severity: np.ndarray
    scr_severity: np.ndarray
    responsiveness: np.ndarray
    route: np.ndarray
    dose_per_kg: np.ndarray
    therapist: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def arm_index(self) -> np.ndarray:
        return np.select([self.arm == a for a in ARMS], list(range(len(ARMS))), default=len(ARMS) - 1)

    @property
    def ketamine(self) -> np.ndarray:
        return np.isin(self.arm, KETAMINE_ARMS)


def _years(days: np.ndarray) -> np.ndarray:
    return np.asarray(days).astype("datetime64[D]").astype("datetime64[Y]").astype(np.int64) + 1970


def _jittered(rng: np.random.Generator, rule: VisitRule, n: int) -> np.ndarray:
    """Offsets near the target, always inside the inclusive window."""
    sd = (rule.window_max - rule.window_min) / 6
    offset = np.clip(rule.target + np.rint(rng.normal(0, sd, n)), rule.window_min, rule.window_max)
    return offset.astype(np.int64)


def schedule_visits(
    rng: np.random.Generator, design: StudyDesign, bl: np.ndarray, screening: np.ndarray
) -> dict[str, np.ndarray]:
    """Planned day of every visit per participant, each inside its DTS §3.1 window."""
    day: dict[str, np.ndarray] = {SCREENING: screening}
    for code, rule in design.visits.items():
        if rule.anchor == BASELINE and code != SCREENING:
            day[code] = bl + _jittered(rng, rule, len(bl))
    # Sessions keep their order: preparation between screening and BL, doses at least two days apart.
    _keep_order(day, design.visits_of_kind("PREPARATION"), 1, screening + 1, bl)
    previous = None
    for code in design.visits_of_kind("DOSING"):
        if previous is not None:
            day[code] = np.minimum(np.maximum(day[code], previous + 2), bl + design.visits[code].window_max)
        previous = day[code]
    for code, rule in design.visits.items():
        if rule.anchor != BASELINE:
            span = np.arange(rule.window_min, rule.window_max + 1)
            weights = 0.25 ** np.arange(len(span))
            day[code] = day[rule.anchor] + rng.choice(span, len(bl), p=weights / weights.sum())
    return day


def _keep_order(
    day: dict[str, np.ndarray], codes: Sequence[str], gap: int, lower: np.ndarray, upper: np.ndarray
) -> None:
    """Push visits apart by `gap` days between bounds: forward from `lower`, then back from `upper`."""
    previous = lower - gap
    for code in codes:
        day[code] = np.maximum(day[code], previous + gap)
        previous = day[code]
    following = upper + gap
    for code in reversed(codes):
        day[code] = np.minimum(day[code], following - gap)
        following = day[code]


def _assign_arms(
    rng: np.random.Generator, randomized: np.ndarray, prior_ect: np.ndarray, bl: np.ndarray
) -> np.ndarray:
    """Permuted blocks of six per stratum, in order of randomization: 1:1:1 like an IWRS."""
    arm = np.full(len(bl), "", dtype=object)
    for stratum in (True, False):
        idx = np.flatnonzero(randomized & (prior_ect == stratum))
        idx = idx[np.argsort(bl[idx], kind="stable")]
        blocks = -(-len(idx) // 6)
        perm = np.argsort(rng.random((blocks, 6)), axis=1) % len(ARMS)
        arm[idx] = np.array(ARMS, dtype=object)[perm.ravel()[: len(idx)]]
    return arm


def simulate_site(
    rng: np.random.Generator, design: StudyDesign, source: str, n: int, export_day: int
) -> SiteTrial:
    """People screened over the enrolment span, their status at export time and their visit schedule."""
    screening = np.sort(rng.integers(export_day - ENROLMENT_SPAN_DAYS, export_day + 1, n))
    consent = screening - rng.choice([0, 0, 0, 1, 2, 3, 5], n)
    age = np.clip(np.rint(rng.normal(45, 12, n)), 19, 74).astype(np.int64)
    scr_rule = design.visits[SCREENING]
    sd = (scr_rule.window_max - scr_rule.window_min) / 6
    gap = np.clip(
        np.rint(rng.normal(-scr_rule.target, sd, n)), max(-scr_rule.window_max, 7), -scr_rule.window_min
    ).astype(np.int64)
    bl = screening + gap
    failed = (rng.random(n) < 0.18) & (bl <= export_day)
    randomized = ~failed & (bl <= export_day)
    day = schedule_visits(rng, design, bl, screening)

    withdrawn = randomized & (export_day - bl >= 3) & (rng.random(n) < 0.10)
    room = np.clip(np.minimum(export_day - bl, 90) - 1, 1, None)
    withdrawal = np.where(withdrawn, bl + 2 + np.floor(rng.random(n) * room).astype(np.int64), -1)
    stop = np.where(withdrawn, withdrawal - 1, export_day)
    done = {code: randomized & (d <= stop) for code, d in day.items()}
    done[SCREENING] = np.ones(n, dtype=bool)
    last_visit = max(design.visits, key=design.nominal_day)
    status = np.select(
        [failed, ~randomized, withdrawn, done[last_visit]],
        ["SCREEN_FAILED", "SCREENED", "WITHDRAWN", "COMPLETED"],
        default="ENROLLED",
    ).astype(object)

    prior_ect = rng.random(n) < 0.3
    bl_severity = np.clip(np.rint(rng.normal(33, 3, n)), 27, 40).astype(np.int64)
    scr_severity = np.clip(bl_severity + np.rint(rng.normal(0, 2, n)), 24, 44).astype(np.int64)
    # Half of the screen failures fail on severity: their screening MADRS is below the entry threshold.
    low = failed & (rng.random(n) < 0.5)
    scr_severity[low] = rng.integers(12, 22, int(low.sum()))
    route = rng.choice(np.array(["IV", "IM", "SL", "IN"], dtype=object), n, p=[0.8, 0.08, 0.07, 0.05])
    return SiteTrial(
        source=source,
        ids=[f"{source}-{i:04d}" for i in range(1, n + 1)],
        export_day=export_day,
        screening=screening,
        consent=consent,
        birth_year=_years(consent) - age,
        sex=rng.choice(np.array(["F", "M", "X"], dtype=object), n, p=[0.55, 0.43, 0.02]),
        weight10=np.rint(np.clip(rng.normal(78, 15, n), 45, 140) * 10).astype(np.int64),
        prior_ect=prior_ect,
        status=status,
        withdrawn=withdrawn,
        withdrawal=withdrawal,
        withdrawal_reason=rng.choice(np.array(WITHDRAWAL_REASONS, dtype=object), n),
        randomized=randomized,
        arm=_assign_arms(rng, randomized, prior_ect, bl),
        bl=bl,
        stop=stop,
        day=day,
        done=done,
        bl_severity=bl_severity,
        scr_severity=scr_severity,
        responsiveness=np.clip(rng.normal(1, 0.35, n), 0.1, 1.7),
        route=route,
        dose_per_kg=rng.choice([0.55, 0.6, 0.7, 0.75, 0.8, 0.9], n),
        therapist=rng.integers(0, 6, n),
    )


# --------------------------------------------------------------------------------------------------
# Building the five datasets from a simulated site


def _staff_base(source: str) -> int:
    digits = re.sub(r"\D", "", source)
    number = int(digits) if digits else zlib.crc32(source.encode())
    return (number % 100) * 10


def _subject_col(trial: SiteTrial, subject: np.ndarray) -> Col:
    return Col(subject, trial.ids)


def build_participants(trial: SiteTrial, dialect: Dialect) -> Table:
    d, e = dialect, dialect.empty
    cols = {
        "subject_id": _subject_col(trial, np.arange(trial.n)),
        "screening_date": _col(trial.screening, d.date, e),
        "consent_date": _col(trial.consent, d.date, e),
        "birth_year": _col(trial.birth_year, str, e),
        "sex": _col(trial.sex, str, e),
        "weight_kg": _col(trial.weight10, d.weight, e),
        "prior_ect": _col(np.where(trial.prior_ect, "Y", "N"), str, e),
        "status": _col(trial.status, str, e),
        "withdrawal_date": _col(trial.withdrawal, d.date, e, trial.withdrawn),
        "withdrawal_reason": _col(trial.withdrawal_reason, str, e, trial.withdrawn),
    }
    num = {
        "screening_date": trial.screening.copy(),
        "consent_date": trial.consent.copy(),
        "weight_kg": trial.weight10.copy(),
    }
    return Table("participants", cols, np.arange(trial.n), num)


def _dose_tenths(
    rng: np.random.Generator, route: np.ndarray, per_kg: np.ndarray, weight10: np.ndarray
) -> np.ndarray:
    """Planned dose inside the protocol range of its route (DTS §3 sessions)."""
    im_per_kg = np.clip(per_kg + 0.4, 0.6, 1.4)
    sublingual = rng.choice([150, 200, 250, 300], len(route)) * 10
    intranasal = rng.choice([28, 56, 84], len(route)) * 10
    return np.select(
        [route == "IV", route == "IM", route == "SL"],
        [np.rint(per_kg * weight10), np.rint(im_per_kg * weight10), sublingual],
        default=intranasal,
    ).astype(np.int64)


def build_sessions(
    rng: np.random.Generator, trial: SiteTrial, design: StudyDesign, dialect: Dialect
) -> Table:
    visits = design.session_visits
    done = np.stack([trial.done[v] for v in visits], axis=1)
    subject, vi = np.nonzero(done)
    m = len(subject)
    kinds = np.array([design.visits[v].kind for v in visits], dtype=object)[vi]
    dosing = kinds == "DOSING"
    days = np.stack([trial.day[v] for v in visits], axis=1)[subject, vi]
    # INTn windows count from their dose's actual day (DTS §3.1); -1 where the anchor is BL.
    anchors = [design.visits[v].anchor for v in visits]
    anchor_days = [trial.day[a] if a != BASELINE else np.full(trial.n, -1) for a in anchors]
    anchor_day = np.stack(anchor_days, axis=1)[subject, vi]
    # A missed dosing session would make "required for dosing" ambiguous; only therapy visits are missed.
    attended = dosing | (rng.random(m) >= 0.04)
    start = 480 + 15 * np.where(dosing, rng.integers(0, 21, m), rng.integers(0, 36, m))
    duration = np.select(
        [~attended, dosing, kinds == "PREPARATION"],
        [rng.integers(5, 16, m), rng.integers(120, 181, m), rng.integers(60, 121, m)],
        default=rng.integers(45, 91, m),
    )
    base = _staff_base(trial.source)
    therapist = np.where(rng.random(m) < 0.85, trial.therapist[subject], rng.integers(0, 6, m)) + base + 1
    route = trial.route[subject]
    weight10 = trial.weight10[subject] + np.rint(rng.normal(0, 6, m)).astype(np.int64)
    dose10 = _dose_tenths(rng, route, trial.dose_per_kg[subject], weight10)
    iv = dosing & (route == "IV")
    infusion = rng.choice([38, 39, 40, 40, 40, 41, 42], m)
    d, e = dialect, dialect.empty
    cols = {
        "subject_id": _subject_col(trial, subject),
        "visit": Col(vi, visits),
        "session_date": _col(days, d.date, e),
        "start_time": _col(start, _hhmm, e),
        "duration_min": _col(duration, str, e),
        "therapist_id": _col(therapist, lambda t: f"T{t:03d}", e),
        "attended": _col(np.where(attended, "Y", "N"), str, e),
        "route": _col(route, str, e, dosing),
        "dose_mg": _col(dose10, d.decimal1, e, dosing),
        "weight_kg": _col(weight10, d.weight, e, dosing),
        "infusion_min": _col(infusion, str, e, iv),
    }
    num = {
        "session_date": days,
        "start_time": start,
        "duration_min": duration,
        "weight_kg": weight10,
        "dosing": dosing,
        "iv": iv,
        "anchor_day": anchor_day,
        "kind": kinds,
        "visit": vi,
    }
    return Table("sessions", cols, subject, num)


def build_vitals(rng: np.random.Generator, trial: SiteTrial, sessions: Table, dialect: Dialect) -> Table:
    """Vital signs before, 40 and 120 minutes into every dosing session; ketamine raises blood pressure."""
    dosing_rows = np.flatnonzero(sessions.num["dosing"])
    k = len(TIMEPOINTS)
    rows = np.repeat(dosing_rows, k)
    tp = np.tile(np.arange(k), len(dosing_rows))
    subject = sessions.subject[rows]
    m = len(rows)
    offsets = np.array([o for _, o in TIMEPOINTS])[tp]
    time = (
        sessions.num["start_time"][rows]
        + offsets
        + np.where(offsets < 0, -rng.integers(0, 6, m), rng.integers(0, 6, m))
    )
    ket = trial.ketamine[subject]
    at40, at120 = tp == 1, tp == 2
    sbp_base = np.clip(rng.normal(124, 10, trial.n), 100, 150)[subject]
    dbp_base = np.clip(rng.normal(78, 7, trial.n), 60, 92)[subject]
    hr_base = np.clip(rng.normal(72, 9, trial.n), 55, 95)[subject]
    rise = np.where(at40, np.where(ket, 16, 4), np.where(at120, np.where(ket, 5, 1), 0))
    # Natural values stay below every safety threshold and inside every hard limit: those are injected.
    sbp = np.clip(np.rint(sbp_base + rise + rng.normal(0, 5, m)), 95, 178).astype(np.int64)
    dbp = np.clip(np.rint(dbp_base + rise * 0.55 + rng.normal(0, 4, m)), 55, 105)
    dbp = np.minimum(dbp, sbp - 15).astype(np.int64)
    hr = np.clip(np.rint(hr_base + rise * 0.5 + rng.normal(0, 5, m)), 50, 125).astype(np.int64)
    spo2 = rng.choice([95, 96, 97, 97, 98, 98, 99, 100], m)
    e = dialect.empty
    cols = {
        "subject_id": Col(sessions.cols["subject_id"].codes[rows], sessions.cols["subject_id"].labels),
        "visit": Col(sessions.cols["visit"].codes[rows], sessions.cols["visit"].labels),
        "timepoint": Col(tp, [t for t, _ in TIMEPOINTS]),
        "measured_time": _col(time, _hhmm, e),
        "sbp": _col(sbp, str, e),
        "dbp": _col(dbp, str, e),
        "hr": _col(hr, str, e),
        "spo2": _col(spo2, str, e),
    }
    num = {"measured_time": time, "sbp": sbp, "hr": hr, "timepoint": tp}
    return Table("vitals", cols, subject, num)


def _split_total(rng: np.random.Generator, totals: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Item scores within their caps that sum exactly to each total (capped at the sum of caps).

    Each item owns `cap` unit slots; the total picks that many slots by weighted sampling without
    replacement (Efraimidis-Spirakis keys), so items differ in severity yet never leave their range.
    """
    n, k = len(totals), len(caps)
    slot_item = np.repeat(np.arange(k), caps)
    s = len(slot_item)
    if n == 0 or s == 0:
        return np.zeros((n, k), dtype=np.int64)
    weights = rng.gamma(3.0, 1.0, (n, k))
    keys = np.log(rng.random((n, s)) + 1e-300) / weights[:, slot_item]
    order = np.argsort(-keys, axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(s), (n, s)), axis=1)
    chosen = ranks < np.minimum(totals, s)[:, None]
    onehot = np.zeros((s, k), dtype=np.int64)
    onehot[np.arange(s), slot_item] = 1
    return chosen.astype(np.int64) @ onehot


def _visit_totals(
    rng: np.random.Generator, trial: SiteTrial, design: StudyDesign
) -> dict[tuple[str, str], np.ndarray]:
    """Intended total of every (instrument, visit) for every participant."""
    n = trial.n
    arm = trial.arm_index
    severity: dict[str, np.ndarray] = {SCREENING: trial.scr_severity, BASELINE: trial.bl_severity}
    for visit in design.assessment_visits:
        if visit not in severity:
            cut = np.array(MADRS_REDUCTION.get(visit, MADRS_REDUCTION["W4"]))[arm]
            gone = np.clip(cut * trial.responsiveness, 0, 0.95)
            severity[visit] = np.rint(trial.bl_severity * (1 - gone) + rng.normal(0, 2.5, n)).astype(np.int64)
    cadss_base = np.where(
        trial.ketamine, np.clip(rng.normal(20, 6, n), 6, None), np.clip(rng.normal(4, 2, n), 0, None)
    )
    totals: dict[tuple[str, str], np.ndarray] = {}
    for visit, instrument in design.blocks:
        sev = severity[visit]
        if instrument == "PHQ9":
            value = sev * 0.40 + rng.normal(0, 1.8, n)
        elif instrument == "GAD7":
            value = sev * 0.30 + rng.normal(0, 1.8, n)
        elif instrument == "CADSS":
            session = design.instruments["CADSS"].visits.index(visit)
            value = cadss_base - 1.0 * session + rng.normal(0, 3, n)
        else:
            value = sev.astype(np.float64)
        totals[(instrument, visit)] = np.clip(np.rint(value), 0, None).astype(np.int64)
    return totals


def _ideation_items(rng: np.random.Generator, severity: np.ndarray, k: int) -> np.ndarray:
    """C-SSRS screen: items 1..level answered 1; natural levels stop below item 4 (a safety flag)."""
    n = len(severity)
    chance = np.clip(0.05 + 0.3 * severity / 40, 0, 0.5)
    level = np.where(rng.random(n) < chance, rng.choice([1, 2, 3], n, p=[0.6, 0.3, 0.1]), 0)
    return (np.arange(1, k + 1)[None, :] <= level[:, None]).astype(np.int64)


def build_assessments(
    rng: np.random.Generator, trial: SiteTrial, design: StudyDesign, dialect: Dialect
) -> Table:
    blocks = design.blocks
    instruments = list(design.instruments)
    visits = list(design.assessment_visits)
    present = np.stack([trial.done[v] for v, _ in blocks], axis=1)
    subject, bi = np.nonzero(present)
    block_visit = np.array([visits.index(v) for v, _ in blocks])[bi]
    block_ins = np.array([instruments.index(i) for _, i in blocks])[bi]
    n_items = np.array([design.instruments[i].items for i in instruments])[block_ins]
    totals = _visit_totals(rng, trial, design)
    total = np.zeros(len(subject), dtype=np.int64)
    for b, (visit, instrument) in enumerate(blocks):
        sel = bi == b
        total[sel] = totals[(instrument, visit)][subject[sel]]

    starts = np.concatenate([[0], np.cumsum(n_items)[:-1]]).astype(np.int64)
    scores = np.zeros(int(n_items.sum()), dtype=np.int64)
    for g, code in enumerate(instruments):
        ins = design.instruments[code]
        sel = np.flatnonzero(block_ins == g)
        if ins.has_total:
            caps = np.array([NATURAL_ITEM_CAP.get((code, i), ins.item_max) for i in range(1, ins.items + 1)])
            items = _split_total(rng, total[sel], caps)
        else:
            items = _ideation_items(rng, total[sel], ins.items)
        scores[(starts[sel][:, None] + np.arange(ins.items)).ravel()] = items.ravel()

    rows = np.repeat(np.arange(len(subject)), n_items)
    item = np.arange(len(rows)) - starts[rows] + 1
    day = np.stack([trial.day[v] for v in visits], axis=1)[subject, block_visit]
    rater = np.where(np.array(instruments)[block_ins] == "MADRS", rng.integers(0, 4, len(subject)), -1)
    base = _staff_base(trial.source)
    e = dialect.empty
    # The first instrument of a visit (MADRS, or CADSS at a dose) has one row per participant and visit.
    lead = np.array([i == 0 or blocks[i - 1][0] != v for i, (v, _) in enumerate(blocks)])[bi]
    cols = {
        "subject_id": _subject_col(trial, subject[rows]),
        "visit": Col(block_visit[rows], visits),
        "instrument": Col(block_ins[rows], instruments),
        "assessment_date": _col(day[rows], dialect.date, e),
        "rater_id": _col(rater[rows], lambda r: f"R{base + 1 + r:03d}", e, rater[rows] >= 0),
        "item": _col(item, str, e),
        "score": _col(scores, str, e),
    }
    item_max = np.array([design.instruments[i].item_max for i in instruments])
    num = {
        "assessment_date": day[rows],
        "item": item,
        "score": scores,
        "instrument": block_ins[rows],
        "visit": block_visit[rows],
        "n_items": n_items[rows],
        "item_max": item_max[block_ins[rows]],
        "lead": lead[rows] & (item == 1),
        "block": rows,  # the assessment (subject, visit, instrument) an item row belongs to
    }
    return Table("assessment_items", cols, subject[rows], num)


def _term_weights(design: StudyDesign, ketamine: bool) -> np.ndarray:
    ketamine_like = {
        "Dissociation",
        "Depersonalisation/derealisation disorder",
        "Nausea",
        "Dizziness",
        "Blood pressure increased",
        "Feeling drunk",
        "Vision blurred",
        "Hypoaesthesia oral",
    }
    placebo_like = {"Sedation", "Somnolence", "Fatigue", "Headache"}
    rare = {"Suicidal ideation", "Depression", "Panic attack", "Cystitis noninfective", "Dysuria"}
    boosted = ketamine_like if ketamine else placebo_like
    w = np.array([(0.2 if p in rare else 1.0) * (4.0 if p in boosted else 1.0) for _, p in design.ae_terms])
    return w / w.sum()


def _verbatim_style(rng: np.random.Generator, terms: np.ndarray) -> np.ndarray:
    """Verbatims as sites type them: case and stray spaces vary, all still match after trim + casefold."""
    style = rng.choice(4, len(terms), p=[0.7, 0.1, 0.15, 0.05])
    return np.array(
        [
            t.upper() if s == 1 else t.title() if s == 2 else f" {t}" if s == 3 else t
            for t, s in zip(terms.tolist(), style.tolist(), strict=True)
        ],
        dtype=object,
    )


def build_adverse_events(
    rng: np.random.Generator, trial: SiteTrial, design: StudyDesign, dialect: Dialect
) -> Table:
    dosing = design.dosing_visits
    doses = np.stack([trial.day[v] for v in dosing], axis=1)
    n_dosed = np.stack([trial.done[v] for v in dosing], axis=1).sum(axis=1)
    rate = np.where(trial.ketamine, 1.8, 0.9) * n_dosed / len(dosing)
    count = rng.poisson(rate) * (n_dosed > 0)
    subject = np.repeat(np.arange(trial.n), count)
    m = len(subject)
    # Done dosing sessions are a prefix of D1..D6 (dates increase), so any index below n_dosed is a real dose.
    dose_index = np.floor(rng.random(m) * n_dosed[subject]).astype(np.int64)
    onset = np.minimum(doses[subject, dose_index] + rng.choice([0, 0, 0, 1, 2], m), trial.stop[subject])
    end = onset + rng.choice([0, 1, 1, 2, 3, 6], m)
    has_end = end <= trial.export_day
    order = np.lexsort((onset, subject))
    subject, onset, end, has_end = subject[order], onset[order], end[order], has_end[order]
    first = np.searchsorted(subject, subject)
    ae_number = np.arange(m) - first + 1
    verbatim = np.array([t for t, _ in design.ae_terms], dtype=object)
    ket = trial.ketamine[subject]
    term = np.where(
        ket,
        rng.choice(verbatim, m, p=_term_weights(design, True)),
        rng.choice(verbatim, m, p=_term_weights(design, False)),
    )
    severity = rng.choice(np.array(["MILD", "MODERATE", "SEVERE"], dtype=object), m, p=[0.65, 0.3, 0.05])
    related = rng.choice(
        np.array(["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"], dtype=object),
        m,
        p=[0.1, 0.15, 0.35, 0.3, 0.1],
    )
    recovered = rng.choice(
        np.array(["RECOVERED", "RECOVERED_WITH_SEQUELAE"], dtype=object), m, p=[0.97, 0.03]
    )
    ongoing = rng.choice(np.array(["RECOVERING", "NOT_RECOVERED"], dtype=object), m, p=[0.6, 0.4])
    action = rng.choice(
        np.array(["NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED"], dtype=object), m, p=[0.9, 0.05, 0.05]
    )
    e = dialect.empty
    cols = {
        "subject_id": _subject_col(trial, subject),
        "ae_id": _col(ae_number, lambda k: f"AE{k:03d}", e),
        "term": _col(_verbatim_style(rng, term), str, e),
        "onset_date": _col(onset, dialect.date, e),
        "end_date": _col(end, dialect.date, e, has_end),
        "severity": _col(severity, str, e),
        "serious": _const(m, "N"),
        "related": _col(related, str, e),
        "outcome": _col(np.where(has_end, recovered, ongoing), str, e),
        "action": _col(action, str, e),
    }
    num = {"onset_date": onset}
    return Table("adverse_events", cols, subject, num)


# --------------------------------------------------------------------------------------------------
# Site profile: personal data, extra columns, column order


@dataclass(frozen=True)
class SiteProfile:
    shuffle_columns: bool
    personal_data: tuple[str, ...]
    extras: dict[str, tuple[str, ...]]


def _rng(seed: int, source: str, stream: int) -> np.random.Generator:
    # Per-source streams: adding or removing a source does not reshuffle another site's simulated data.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(source.encode()), stream]))


def plan_profiles(seed: int, sources: Sequence[str]) -> dict[str, SiteProfile]:
    profiles: dict[str, SiteProfile] = {}
    for source in sources:
        rng = _rng(seed, source, 1)
        phi: tuple[str, ...] = ()
        if rng.random() < 0.5:
            phi = ("initials", "date_of_birth") if rng.random() < 0.6 else ("initials",)
            if rng.random() < 0.5:
                phi += (str(rng.choice(PERSONAL_DATA_EXTRA)),)
        extras = {ds: tuple(c for c in cols if rng.random() < 0.35) for ds, cols in EXTRA_COLUMNS.items()}
        profiles[source] = SiteProfile(bool(rng.random() < 0.6), phi, {k: v for k, v in extras.items() if v})
    # Small trials must still exercise the personal-data and extra-column paths somewhere.
    if profiles and not any(p.personal_data for p in profiles.values()):
        last = list(profiles)[-1]
        profiles[last] = SiteProfile(
            profiles[last].shuffle_columns, ("initials", "date_of_birth"), profiles[last].extras
        )
    if profiles and not any(p.extras for p in profiles.values()):
        first = next(iter(profiles))
        profiles[first] = SiteProfile(
            profiles[first].shuffle_columns,
            profiles[first].personal_data,
            {"sessions": ("room",), "adverse_events": ("comment",)},
        )
    return profiles


def _personal_values(
    rng: np.random.Generator, column: str, trial: SiteTrial, dialect: Dialect
) -> tuple[list[str], np.ndarray]:
    """Personal-data strings per participant, and the dates of birth (days) behind date_of_birth."""
    n = trial.n
    letters = rng.integers(0, 26, (n, 3))
    initials = [".".join(chr(65 + c) for c in row) + "." for row in letters.tolist()]
    january_first = (trial.birth_year - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    birth = january_first + rng.integers(0, 365, n)
    if column == "initials":
        return initials, birth
    if column in ("date_of_birth", "dob"):
        return [dialect.date(b) for b in birth], birth
    digits = rng.integers(0, 10, (n, 10)).astype(str)
    joined = ["".join(row) for row in digits.tolist()]
    if column == "mrn":
        return [f"MRN{j[:7]}" for j in joined], birth
    if column == "phone":
        return [f"+41 79 {j[:3]} {j[3:5]} {j[5:7]}" for j in joined], birth
    if column == "email":
        return [
            f"{i.replace('.', '').lower()}{j[:3]}@example.org" for i, j in zip(initials, joined, strict=True)
        ], birth
    if column == "nhs_number":
        return [f"{j[:3]} {j[3:6]} {j[6:]}" for j in joined], birth
    return rng.choice(np.array(FIRST_NAMES, dtype=object), n).tolist(), birth


def add_profile_columns(
    rng: np.random.Generator,
    tables: dict[str, Table],
    trial: SiteTrial,
    dialect: Dialect,
    profile: SiteProfile,
) -> None:
    participants = tables["participants"]
    for column in profile.personal_data:
        values, birth = _personal_values(rng, column, trial, dialect)
        participants.cols[column] = Col(np.arange(trial.n), values)
        if column in ("date_of_birth", "dob"):
            participants.num["dob"] = birth
    for dataset, columns in profile.extras.items():
        table = tables[dataset]
        for column in columns:
            pool = EXTRA_VALUES[column]
            sparse = column == "comment"
            codes = rng.integers(0, len(pool), table.capacity) + 1
            if sparse:
                codes = np.where(rng.random(table.capacity) < 0.08, codes, 0)
            table.cols[column] = Col(codes, [dialect.empty, *pool])


def vary_missing(rng: np.random.Generator, table: Table, dialect: Dialect) -> None:
    """Most empty values use the site's first missing code; some use its other codes, as real exports do."""
    alternatives = dialect.missing[1:]
    if not alternatives:
        return
    for col in table.cols.values():
        empty = col.index_of(dialect.empty)
        if empty is None:
            continue
        rows = np.flatnonzero(col.codes == empty)
        rows = rows[rng.random(len(rows)) < ALT_MISSING_SHARE]
        codes = np.array([col.code(a) for a in alternatives], dtype=np.int32)
        col.codes[rows] = codes[rng.integers(0, len(codes), len(rows))]


# --------------------------------------------------------------------------------------------------
# Controlled defects


@dataclass(frozen=True)
class Variant:
    dataset: str
    kind: str  # a DTS §6 reason code, or DUPLICATE
    method: str
    args: tuple[Any, ...] = ()


PARTICIPANT_VARIANTS = (
    Variant("participants", "UNPARSEABLE", "garble_number", ("weight_kg",)),
    Variant("participants", "UNPARSEABLE", "impossible_date", ("screening_date",)),
    Variant("participants", "MISSING_REQUIRED", "blank", ("sex",)),
    Variant("participants", "MISSING_REQUIRED", "blank", ("birth_year",)),
    Variant("participants", "OUT_OF_RANGE", "overwrite", ("sex", ("Q",))),
    Variant("participants", "OUT_OF_RANGE", "overwrite", ("birth_year", ("1890",))),
    Variant("participants", "OUT_OF_RANGE", "overwrite_decimal", ("weight_kg", 125)),
    Variant("participants", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("weight_kg",)),
    Variant("participants", "INCONSISTENT", "consent_after_screening"),
)

ROW_VARIANTS = (
    Variant("participants", DUPLICATE, "identical_duplicate"),
    Variant("sessions", "UNPARSEABLE", "garble_time", ("start_time",)),
    Variant("sessions", "UNPARSEABLE", "impossible_date", ("session_date",)),
    Variant("sessions", "UNPARSEABLE", "garble_number", ("weight_kg",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("therapist_id",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("start_time",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("duration_min",)),
    Variant("sessions", "OUT_OF_RANGE", "overwrite", ("duration_min", ("720", "3"))),
    Variant("sessions", "OUT_OF_RANGE", "overwrite_decimal", ("dose_mg", 9500)),
    Variant("sessions", "OUT_OF_RANGE", "overwrite", ("infusion_min", ("300",))),
    Variant("sessions", "UNKNOWN_SUBJECT", "unknown_subject"),
    Variant("sessions", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("duration_min",)),
    Variant("sessions", DUPLICATE, "identical_duplicate"),
    Variant("vitals", "UNPARSEABLE", "garble_time", ("measured_time",)),
    Variant("vitals", "UNPARSEABLE", "garble_number", ("hr",)),
    Variant("vitals", "MISSING_REQUIRED", "blank", ("hr",)),
    Variant("vitals", "MISSING_REQUIRED", "blank", ("spo2",)),
    Variant("vitals", "MISSING_REQUIRED", "blank", ("measured_time",)),
    Variant("vitals", "OUT_OF_RANGE", "overwrite", ("sbp", ("400",))),
    Variant("vitals", "OUT_OF_RANGE", "overwrite", ("hr", ("300",))),
    Variant("vitals", "OUT_OF_RANGE", "overwrite", ("spo2", ("101",))),
    Variant("vitals", "UNKNOWN_SUBJECT", "unknown_subject"),
    Variant("vitals", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("hr",)),
    Variant("vitals", "INCONSISTENT", "swap_blood_pressure"),
    Variant("vitals", DUPLICATE, "identical_duplicate"),
    Variant("assessment_items", "UNPARSEABLE", "score_as_word"),
    Variant("assessment_items", "UNPARSEABLE", "impossible_date", ("assessment_date",)),
    Variant("assessment_items", "MISSING_REQUIRED", "blank", ("score",)),
    Variant("assessment_items", "MISSING_REQUIRED", "blank", ("assessment_date",)),
    Variant("assessment_items", "MISSING_REQUIRED", "blank", ("rater_id",)),
    Variant("assessment_items", "OUT_OF_RANGE", "score_out_of_range"),
    Variant("assessment_items", "UNKNOWN_SUBJECT", "unknown_subject"),
    Variant("assessment_items", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("score",)),
    Variant("assessment_items", "INVALID_VISIT", "item_not_in_instrument"),
    Variant("assessment_items", "INVALID_VISIT", "instrument_at_wrong_visit"),
    Variant("assessment_items", DUPLICATE, "identical_duplicate"),
    Variant("adverse_events", "UNPARSEABLE", "impossible_date", ("onset_date",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("severity",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("related",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("term",)),
    Variant("adverse_events", "OUT_OF_RANGE", "overwrite", ("severity", ("EXTREME",))),
    Variant("adverse_events", "OUT_OF_RANGE", "overwrite", ("outcome", ("RESOLVED",))),
    Variant("adverse_events", "UNKNOWN_SUBJECT", "unknown_subject"),
    Variant("adverse_events", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("severity",)),
    Variant("adverse_events", "INCONSISTENT", "end_before_onset"),
    Variant("adverse_events", DUPLICATE, "identical_duplicate"),
)

# Flag-worthy values that land (DTS §6 flags); each entry lists the ways to cause it.
FLAG_METHODS: dict[str, tuple[str, ...]] = {
    "WINDOW_DEVIATION": ("flag_window_assessment", "flag_window_session"),
    "DOSE_DEVIATION": ("flag_dose",),
    "AGE_DEVIATION": ("flag_age",),
    "SAFETY_VITALS": ("flag_vitals",),
    "SAFETY_SUICIDALITY": ("flag_cssrs", "flag_phq9_item9", "flag_madrs_item10"),
    "SAFETY_SAE": ("flag_serious",),
    "UNCODED_TERM": ("flag_uncoded",),
    "INCOMPLETE_ASSESSMENT": ("flag_incomplete",),
}


@dataclass(frozen=True)
class DefectPlan:
    """The defects and flags a delivery format can carry: a REDCap export cannot hold every CSV defect."""

    participant_variants: tuple[Variant, ...]
    row_variants: tuple[Variant, ...]
    flag_methods: Mapping[str, tuple[str, ...]]


DTS_PLAN = DefectPlan(PARTICIPANT_VARIANTS, ROW_VARIANTS, FLAG_METHODS)
CONFLICT_STEP = {"duration_min": 15, "hr": 6, "weight_kg": 20}
SEVERITY_SHIFT = {"MILD": "MODERATE", "MODERATE": "MILD", "SEVERE": "MODERATE"}


class DefectInjector:
    """Injects defects one kind at a time, in batches, never two on the same row or key."""

    plan = DTS_PLAN

    def __init__(
        self,
        rng: np.random.Generator,
        trial: SiteTrial,
        design: StudyDesign,
        dialect: Dialect,
        tables: dict[str, Table],
        transfer_id: str,
    ) -> None:
        self.rng = rng
        self.trial = trial
        self.design = design
        self.dialect = dialect
        self.tables = tables
        self.transfer_id = transfer_id
        self.protected = np.zeros(trial.n, dtype=bool)  # participant row quarantined: children go with it
        self.only: int | None = None  # restrict picking to one participant's rows
        self.events = dict.fromkeys(DATASET_FILES, 0)
        self.collapsed = dict.fromkeys(DATASET_FILES, 0)
        self.flags: list[dict[str, Any]] = []
        self.serious_rows: list[int] = []
        # Unknown subjects: numbers above any participant's, never reused: no two injected rows share a key.
        self.next_unknown = 9999

    # -- picking ---------------------------------------------------------------------------------

    def present(self, table: Table, column: str) -> np.ndarray:
        return ~table.cols[column].is_missing(self.dialect.missing)

    def pick(
        self, dataset: str, count: int, where: np.ndarray | None = None, reuse: np.ndarray | None = None
    ) -> np.ndarray:
        """Up to `count` random rows that carry nothing yet (or are in `reuse`), of participants that land."""
        table = self.tables[dataset]
        free = ~table.used if reuse is None else ~table.used | reuse
        ok = table.alive & free & (table.subject >= 0)
        if self.only is not None:
            ok &= table.subject == self.only
        else:
            ok &= ~self.protected[np.maximum(table.subject, 0)]
        if where is not None:
            ok &= where
        candidates = np.flatnonzero(ok)
        if count <= 0 or len(candidates) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(self.rng.choice(candidates, min(count, len(candidates)), replace=False))

    def corrupt(
        self, dataset: str, column: str, rows: np.ndarray, texts: str | Sequence[str], reason: str
    ) -> int:
        table = self.tables[dataset]
        table.cols[column].set(rows, texts)
        table.mark(rows, reason, column)
        return len(rows)

    def apply(self, variant: Variant, count: int) -> int:
        applied = int(getattr(self, variant.method)(variant.dataset, *variant.args, count))
        self.events[variant.dataset] += applied
        return applied

    # -- quarantine defects ----------------------------------------------------------------------

    def garble_number(self, dataset: str, column: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count, self.present(table, column))
        return self.corrupt(
            dataset, column, rows, [_garble(t) for t in table.cols[column].text(rows)], "UNPARSEABLE"
        )

    def garble_time(self, dataset: str, column: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count, self.present(table, column))
        minutes = table.num[column][rows]
        return self.corrupt(
            dataset, column, rows, [f"{m // 60}h{m % 60:02d}" for m in minutes.tolist()], "UNPARSEABLE"
        )

    def impossible_date(self, dataset: str, column: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count, self.present(table, column))
        years = _years(table.num[column][rows]).tolist()
        variants = self.rng.integers(0, len(IMPOSSIBLE_DAYS), len(rows)).tolist()
        texts = [self.dialect.impossible_date(y, v) for y, v in zip(years, variants, strict=True)]
        return self.corrupt(dataset, column, rows, texts, "UNPARSEABLE")

    def score_as_word(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        return self.corrupt(
            dataset, "score", rows, [SCORE_WORDS[s] for s in table.num["score"][rows].tolist()], "UNPARSEABLE"
        )

    def blank(self, dataset: str, column: str, count: int) -> int:
        rows = self.pick(dataset, count, self.present(self.tables[dataset], column))
        codes = self.rng.choice(np.array(self.dialect.missing, dtype=object), len(rows)).tolist()
        return self.corrupt(dataset, column, rows, codes, "MISSING_REQUIRED")

    def overwrite(self, dataset: str, column: str, values: tuple[str, ...], count: int) -> int:
        rows = self.pick(dataset, count, self.present(self.tables[dataset], column))
        texts = self.rng.choice(np.array(values, dtype=object), len(rows)).tolist()
        return self.corrupt(dataset, column, rows, texts, "OUT_OF_RANGE")

    def overwrite_decimal(self, dataset: str, column: str, tenths: int, count: int) -> int:
        rows = self.pick(dataset, count, self.present(self.tables[dataset], column))
        return self.corrupt(dataset, column, rows, self.dialect.decimal1(tenths), "OUT_OF_RANGE")

    def score_out_of_range(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        return self.corrupt(
            dataset, "score", rows, [str(m + 3) for m in table.num["item_max"][rows].tolist()], "OUT_OF_RANGE"
        )

    def unknown_subject(self, dataset: str, count: int) -> int:
        """A copied row under a subject id that has no participant row: a number above every participant's,
        or a real participant's number under another site's prefix (DTS §6 names both)."""
        table = self.tables[dataset]
        rows = self.pick(dataset, min(count, self.next_unknown - self.trial.n))
        if len(rows) == 0:
            return 0
        # Stray rows sit at the end of the file, as rows keyed in later do.
        copies = table.copy_rows(rows, self.rng.uniform(table.base_rows, table.base_rows + 1, len(rows)))
        foreign = self.rng.random(len(rows)) < 0.5
        ids = [
            self._unknown_id(int(table.subject[row]), other_site)
            for row, other_site in zip(rows.tolist(), foreign.tolist(), strict=True)
        ]
        table.subject[copies] = -1
        table.used[rows] = True  # copying the same row twice under the same foreign id would repeat a key
        return self.corrupt(dataset, "subject_id", copies, ids, "UNKNOWN_SUBJECT")

    def _unknown_id(self, subject: int, other_site: bool) -> str:
        if other_site:
            return f"{_other_prefix(self.trial.source)}-{self.trial.ids[subject][-4:]}"
        self.next_unknown -= 1
        return f"{self.trial.source}-{self.next_unknown + 1:04d}"

    def conflicting_duplicate(self, dataset: str, column: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count, self.present(table, column))
        copies = table.copy_rows(rows, table.pos[rows] + 0.5)
        table.cols[column].set(copies, self._conflicting_values(table, column, rows))
        table.mark(np.concatenate([rows, copies]), "CONFLICTING_DUPLICATE", column)
        return len(rows)

    def _conflicting_values(self, table: Table, column: str, rows: np.ndarray) -> list[str]:
        """A different value that still parses and stays inside every limit, so only the conflict applies."""
        if column == "severity":
            return [SEVERITY_SHIFT[t] for t in table.cols[column].text(rows)]
        if column == "score":
            score, top = table.num["score"][rows], table.num["item_max"][rows]
            return [str(s) for s in np.where(score < top, score + 1, score - 1).tolist()]
        values = table.num[column][rows] + CONFLICT_STEP[column]
        return [self.dialect.weight(v) if column == "weight_kg" else str(v) for v in values.tolist()]

    def identical_duplicate(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        copies = table.copy_rows(rows, table.pos[rows] + 0.5)
        table.used[rows] = table.used[copies] = True
        self.collapsed[dataset] += len(rows)
        return len(rows)

    def item_not_in_instrument(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count, table.num["item"] == 1)  # one per assessment: no shared key
        copies = table.copy_rows(rows, table.pos[rows] + table.num["n_items"][rows] - 0.5)
        table.cols["item"].set(copies, [str(k + 1) for k in table.num["n_items"][rows].tolist()])
        table.mark(copies, "INVALID_VISIT", "item")
        table.used[rows] = True  # a second extra item on the same assessment would share this key
        return len(rows)

    def instrument_at_wrong_visit(self, dataset: str, count: int) -> int:
        """A whole instrument at a visit where it is not taken (GAD7 at W1): each row is INVALID_VISIT."""
        table = self.tables[dataset]
        visits = self.design.assessment_visits
        wrong = {
            v: [i for i, ins in self.design.instruments.items() if v not in ins.visits and ins.items <= 10]
            for v in visits
        }
        allowed = np.array([bool(wrong[v]) for v in visits])
        # Count rows, not blocks, so the defect rate stays relative to rows.
        rows = self.pick(dataset, count, table.num["lead"] & allowed[table.num["visit"]])
        codes = [str(self.rng.choice(wrong[visits[v]])) for v in table.num["visit"][rows].tolist()]
        sizes = np.array([self.design.instruments[c].items for c in codes], dtype=np.int64)
        keep = int(np.searchsorted(np.cumsum(sizes), count) + 1) if len(rows) else 0
        rows, codes, sizes = rows[:keep], codes[:keep], sizes[:keep]
        templates = np.repeat(rows, sizes)
        item = np.arange(len(templates)) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
        # The block goes right behind the visit's first instrument, in item order.
        after = table.pos[templates] + table.num["n_items"][templates] - 0.5
        copies = table.copy_rows(templates, after + item / 1000)
        instrument = np.repeat(np.array(codes, dtype=object), sizes).tolist()
        spec = [self.design.instruments[c] for c in instrument]
        scores = self.rng.integers([i.item_min for i in spec], [i.item_max + 1 for i in spec])
        table.cols["instrument"].set(copies, instrument)
        table.cols["item"].set(copies, [str(i) for i in item.tolist()])
        table.cols["score"].set(copies, [str(v) for v in scores.tolist()])
        # The rater is required on MADRS only: give it one, so the visit is the record's only fault.
        rater = f"R{_staff_base(self.trial.source) + 1:03d}"
        table.cols["rater_id"].set(
            copies, [rater if c == "MADRS" else self.dialect.empty for c in instrument]
        )
        table.mark(copies, "INVALID_VISIT", "visit")
        table.used[rows] = True  # a second block from the same template would share its keys
        return len(copies)

    def consent_after_screening(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        days = table.num["screening_date"][rows] + self.rng.integers(1, 4, len(rows))
        return self.corrupt(
            dataset, "consent_date", rows, [self.dialect.date(d) for d in days], "INCONSISTENT"
        )

    def end_before_onset(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        days = table.num["onset_date"][rows] - self.rng.integers(1, 4, len(rows))
        return self.corrupt(dataset, "end_date", rows, [self.dialect.date(d) for d in days], "INCONSISTENT")

    def swap_blood_pressure(self, dataset: str, count: int) -> int:
        table = self.tables[dataset]
        rows = self.pick(dataset, count)
        sbp, dbp = table.cols["sbp"].text(rows), table.cols["dbp"].text(rows)
        table.cols["sbp"].set(rows, dbp)
        return self.corrupt(dataset, "dbp", rows, sbp, "INCONSISTENT")

    # -- flag-worthy values that land ------------------------------------------------------------

    def flag(self, flag_type: str, dataset: str, subjects: np.ndarray, visits: Sequence[str | None]) -> int:
        for s, v in zip(subjects.tolist(), visits, strict=True):
            self.flags.append(
                {
                    "source": self.trial.source,
                    "transfer_id": self.transfer_id,
                    "flag_type": flag_type,
                    "dataset": dataset,
                    "subject_id": self.trial.ids[s],
                    "visit": v,
                }
            )
        return len(subjects)

    def _visit_codes(self, table: Table, rows: np.ndarray) -> list[str]:
        return table.cols["visit"].text(rows)

    def flag_window_assessment(self, flag_type: str, count: int) -> int:
        """Move every assessment of one weekly visit two days outside its window."""
        table = self.tables["assessment_items"]
        visits = self.design.assessment_visits
        rules = [self.design.visits[v] for v in visits]
        weekly = np.array([r.kind == "assessment" and r.anchor == BASELINE and r.target > 0 for r in rules])
        rows = self.pick("assessment_items", count, table.num["lead"] & weekly[table.num["visit"]])
        for row in rows.tolist():
            s, vi = int(table.subject[row]), int(table.num["visit"][row])
            rule = self.design.visits[visits[vi]]
            day = self.trial.bl[s] + rule.window_max + 2
            if day > self.trial.stop[s]:
                day = self.trial.bl[s] + rule.window_min - 2
            same = np.flatnonzero(table.alive & (table.subject == s) & (table.num["visit"] == vi))
            table.cols["assessment_date"].set(same, self.dialect.date(day))
            table.used[same] = True
        return self.flag(flag_type, "assessment_items", table.subject[rows], self._visit_codes(table, rows))

    def flag_window_session(self, flag_type: str, count: int) -> int:
        """An integration session five days after its dose (window: 1 to 3 days after)."""
        table = self.tables["sessions"]
        late = table.num["anchor_day"] + 5
        fits = (table.num["kind"] == "INTEGRATION") & (late <= self.trial.stop[np.maximum(table.subject, 0)])
        rows = self.pick("sessions", count, fits)
        table.cols["session_date"].set(rows, [self.dialect.date(d) for d in late[rows].tolist()])
        table.used[rows] = True
        # The window counts from the dose's own row: keep that row clean so the deviation stays measurable.
        anchors = [
            self.design.session_visits.index(self.design.visits[v].anchor)
            for v in self._visit_codes(table, rows)
        ]
        for subject, anchor in zip(table.subject[rows].tolist(), anchors, strict=True):
            table.used[table.alive & (table.subject == subject) & (table.num["visit"] == anchor)] = True
        return self.flag(flag_type, "sessions", table.subject[rows], self._visit_codes(table, rows))

    def flag_dose(self, flag_type: str, count: int) -> int:
        """IV at 1.25 mg/kg, or an infusion shorter than 35 minutes: landed, outside the protocol range."""
        table = self.tables["sessions"]
        rows = self.pick("sessions", count, table.num["iv"])
        too_short = self.rng.random(len(rows)) < 0.4
        table.cols["infusion_min"].set(
            rows[too_short], [str(v) for v in self.rng.integers(20, 31, too_short.sum())]
        )
        heavy = rows[~too_short]
        table.cols["dose_mg"].set(
            heavy, [self.dialect.decimal1(round(1.25 * w)) for w in table.num["weight_kg"][heavy]]
        )
        table.used[rows] = True
        return self.flag(flag_type, "sessions", table.subject[rows], self._visit_codes(table, rows))

    def flag_age(self, flag_type: str, count: int) -> int:
        """Birth year giving an age at consent outside 18-75, inside the 1900-2010 hard limit."""
        table = self.tables["participants"]
        rows = self.pick("participants", count)
        consent_year = _years(table.num["consent_date"][rows])
        age = self.rng.choice([16, 17, 77, 79, 82], len(rows))
        years = consent_year - age
        years = np.where(years > 2010, consent_year - 79, years)
        table.cols["birth_year"].set(rows, [str(y) for y in years.tolist()])
        if "date_of_birth" in table.cols or "dob" in table.cols:
            column = "date_of_birth" if "date_of_birth" in table.cols else "dob"
            births = [_with_year(int(b), int(y)) for b, y in zip(table.num["dob"][rows], years, strict=True)]
            table.num["dob"][rows] = births
            table.cols[column].set(rows, [self.dialect.date(b) for b in births])
        table.used[rows] = True
        return self.flag(flag_type, "participants", table.subject[rows], [None] * len(rows))

    def flag_vitals(self, flag_type: str, count: int) -> int:
        """At 40 minutes: sbp >= 180 (dose-hold), hr >= 130 or spo2 < 92."""
        table = self.tables["vitals"]
        rows = self.pick("vitals", count, table.num["timepoint"] == 1)
        kind = self.rng.integers(0, 3, len(rows))
        for k, column, low, high in ((0, "sbp", 182, 197), (1, "hr", 132, 141), (2, "spo2", 88, 92)):
            picked = rows[kind == k]
            table.cols[column].set(picked, [str(v) for v in self.rng.integers(low, high, len(picked))])
        table.used[rows] = True
        return self.flag(flag_type, "vitals", table.subject[rows], self._visit_codes(table, rows))

    def _item_rows(self, code: str, item: int) -> np.ndarray:
        table = self.tables["assessment_items"]
        index = list(self.design.instruments).index(code)
        return (table.num["instrument"] == index) & (table.num["item"] == item)

    def flag_cssrs(self, flag_type: str, count: int) -> int:
        """C-SSRS intent (item 4) with the lower ideation items answered too, as the screen is built."""
        table = self.tables["assessment_items"]
        rows = self.pick("assessment_items", count, self._item_rows("CSSRS", 4))
        for row in rows.tolist():
            block = np.arange(row - 3, row + 1)  # items 1..4 of the same assessment are the rows just above
            table.cols["score"].set(block, "1")
            table.used[block] = True
        return self.flag(flag_type, "assessment_items", table.subject[rows], self._visit_codes(table, rows))

    def flag_phq9_item9(self, flag_type: str, count: int) -> int:
        return self._flag_item(flag_type, "PHQ9", 9, (1, 2, 3), count)

    def flag_madrs_item10(self, flag_type: str, count: int) -> int:
        return self._flag_item(flag_type, "MADRS", 10, (4, 5), count)

    def _flag_item(self, flag_type: str, code: str, item: int, values: tuple[int, ...], count: int) -> int:
        table = self.tables["assessment_items"]
        rows = self.pick("assessment_items", count, self._item_rows(code, item))
        table.cols["score"].set(rows, [str(v) for v in self.rng.choice(values, len(rows)).tolist()])
        table.used[rows] = True
        return self.flag(flag_type, "assessment_items", table.subject[rows], self._visit_codes(table, rows))

    def flag_serious(self, flag_type: str, count: int) -> int:
        table = self.tables["adverse_events"]
        rows = self.pick("adverse_events", count)
        table.cols["serious"].set(rows, "Y")
        table.cols["severity"].set(rows, "SEVERE")
        table.cols["action"].set(rows, "DOSE_INTERRUPTED")
        table.used[rows] = True
        self.serious_rows.extend(rows.tolist())
        return self.flag(flag_type, "adverse_events", table.subject[rows], [None] * len(rows))

    def flag_uncoded(self, flag_type: str, count: int) -> int:
        table = self.tables["adverse_events"]
        known = {t.strip().casefold() for t, _ in self.design.ae_terms}
        pool = np.array([t for t in UNCODED_TERMS if t.casefold() not in known], dtype=object)
        # Seriousness and coding touch different columns, so a small site's only AE may carry both.
        serious = np.zeros(table.capacity, dtype=bool)
        serious[self.serious_rows] = True
        rows = self.pick("adverse_events", count, reuse=serious)
        table.cols["term"].set(rows, self.rng.choice(pool, len(rows)).tolist())
        table.used[rows] = True
        return self.flag(flag_type, "adverse_events", table.subject[rows], [None] * len(rows))

    def flag_incomplete(self, flag_type: str, count: int) -> int:
        """One item row left out of an assessment that has a total (C-SSRS has none, so it is never used)."""
        table = self.tables["assessment_items"]
        with_total = np.array([ins.has_total for ins in self.design.instruments.values()])
        rows = self.pick("assessment_items", count, with_total[table.num["instrument"]])
        table.alive[rows] = False
        table.used[rows] = True
        return self.flag(flag_type, "assessment_items", table.subject[rows], self._visit_codes(table, rows))


def _other_prefix(source: str) -> str:
    """Another site's prefix, as a mistyped subject id would carry it."""
    match = re.fullmatch(r"S(\d{2})", source)
    return f"S{int(match.group(1)) % 99 + 1:02d}" if match else "S99"


def _garble(text: str) -> str:
    """A number with a letter typed for a digit (7o.5): never readable, never scientific notation."""
    for digit, letter in (("0", "o"), ("1", "l"), ("5", "S")):
        if digit in text:
            return text.replace(digit, letter, 1)
    return text[:1] + "o" + text[1:]


def _with_year(day: int, year: int) -> int:
    moment = EPOCH + timedelta(days=day)
    return (date(year, moment.month, min(moment.day, 28 if moment.month == 2 else moment.day)) - EPOCH).days


def inject_defects(injector: DefectInjector, rate: float, n_subjects: int) -> None:
    """Participant defects first (they decide whose records follow them), then flags, then row defects."""
    if rate <= 0:
        return
    rng = injector.rng
    _inject_participant_defects(injector, rate, n_subjects)
    # One of each flag first, then the rest, so scarce rows (a small site's few AEs) serve every kind.
    extra = max(1, round(rate * n_subjects)) - 1
    plan = injector.plan
    for wanted_per_kind in (1, extra):
        for flag_type, methods in plan.flag_methods.items():
            wanted = wanted_per_kind
            for i in rng.permutation(len(methods)).tolist():
                if wanted > 0:
                    wanted -= getattr(injector, methods[i])(flag_type, wanted)
    # At least one of every kind per site, so small trials exercise every path ...
    for kind in (*REASONS, DUPLICATE):
        options = [v for v in plan.row_variants if v.kind == kind]
        for i in rng.permutation(len(options)).tolist():
            if injector.apply(options[i], 1):
                break
    # ... then the rest at the requested rate, relative to each dataset's rows.
    for dataset in CHILD_DATASETS:
        options = [v for v in plan.row_variants if v.dataset == dataset]
        wanted = round(rate * injector.tables[dataset].base_rows) - injector.events[dataset]
        if wanted <= 0:
            continue
        counts = np.bincount(rng.integers(0, len(options), wanted), minlength=len(options))
        for variant, count in zip(options, counts.tolist(), strict=True):
            if count:
                injector.apply(variant, count)


def _inject_participant_defects(injector: DefectInjector, rate: float, n_subjects: int) -> None:
    """Quarantine a few participant rows; their other records then become UNKNOWN_SUBJECT (DTS §6).

    People without randomization are preferred (they only have screening data), and at most a fifth of
    the site is used, so enough clean participants remain for the child-dataset defects.
    """
    rng, trial = injector.rng, injector.trial
    wanted = min(max(1, round(rate * n_subjects)), max(1, n_subjects // 5))
    preference = rng.random(trial.n) + np.where(trial.randomized, 0.6, 0.0)
    for subject in np.argsort(preference, kind="stable")[:wanted].tolist():
        injector.only = subject
        variants = injector.plan.participant_variants
        try:
            for i in rng.permutation(len(variants)).tolist():
                if injector.apply(variants[i], 1):
                    injector.protected[subject] = True
                    break
        finally:
            injector.only = None


def mark_unknown_consequences(injector: DefectInjector) -> None:
    """A participant whose own row is quarantined takes all their records with them (DTS §6)."""
    for dataset in CHILD_DATASETS:
        table = injector.tables[dataset]
        rows = table.alive & (table.reason == "") & (table.subject >= 0)
        rows &= injector.protected[np.maximum(table.subject, 0)]
        table.mark(np.flatnonzero(rows), "UNKNOWN_SUBJECT", "subject_id")


# --------------------------------------------------------------------------------------------------
# REDCap: the defects and flags its export can hold (DTS §4, §6)

REDCAP_PARTICIPANT_VARIANTS = (
    Variant("participants", "UNPARSEABLE", "garble_number", ("weight_kg",)),
    Variant("participants", "UNPARSEABLE", "impossible_date", ("screening_date",)),
    Variant("participants", "MISSING_REQUIRED", "blank", ("sex",)),
    Variant("participants", "MISSING_REQUIRED", "blank", ("birth_year",)),
    Variant("participants", "OUT_OF_RANGE", "overwrite", ("sex", ("4", "9"))),  # a raw code with no choice
    Variant("participants", "OUT_OF_RANGE", "overwrite", ("birth_year", ("1890",))),
    Variant("participants", "OUT_OF_RANGE", "overwrite_decimal", ("weight_kg", 125)),
    Variant("participants", "INCONSISTENT", "consent_after_screening"),
)
# A record has one row per event, so only repeating instruments (vital signs, adverse events) can repeat a
# key; an assessment's date and rater are fields of its form, so their defects reach every item of the form;
# an empty item is a missing item, never a quarantined record (DTS §4).
REDCAP_ROW_VARIANTS = (
    Variant("sessions", "UNPARSEABLE", "garble_time", ("start_time",)),
    Variant("sessions", "UNPARSEABLE", "impossible_date", ("session_date",)),
    Variant("sessions", "UNPARSEABLE", "garble_number", ("weight_kg",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("therapist_id",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("start_time",)),
    Variant("sessions", "MISSING_REQUIRED", "blank", ("duration_min",)),
    Variant("sessions", "OUT_OF_RANGE", "overwrite", ("duration_min", ("720", "3"))),
    Variant("sessions", "OUT_OF_RANGE", "overwrite_decimal", ("dose_mg", 9500)),
    Variant("sessions", "OUT_OF_RANGE", "overwrite", ("infusion_min", ("300",))),
    Variant("sessions", "UNKNOWN_SUBJECT", "unknown_subject"),
    *(v for v in ROW_VARIANTS if v.dataset == "vitals"),
    Variant("assessment_items", "UNPARSEABLE", "score_as_word"),
    Variant("assessment_items", "UNPARSEABLE", "form_impossible_date", ("assessment_date",)),
    Variant("assessment_items", "MISSING_REQUIRED", "form_blank", ("assessment_date",)),
    Variant("assessment_items", "MISSING_REQUIRED", "form_blank", ("rater_id",)),
    Variant("assessment_items", "OUT_OF_RANGE", "score_out_of_range"),
    Variant("assessment_items", "UNKNOWN_SUBJECT", "form_unknown_subject"),
    Variant("assessment_items", "INVALID_VISIT", "instrument_at_wrong_visit"),
    Variant("adverse_events", "UNPARSEABLE", "impossible_date", ("onset_date",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("severity",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("related",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("term",)),
    Variant("adverse_events", "MISSING_REQUIRED", "blank", ("action",)),  # no box of ae_action ticked
    Variant("adverse_events", "OUT_OF_RANGE", "overwrite", ("severity", ("4",))),
    Variant("adverse_events", "OUT_OF_RANGE", "overwrite", ("outcome", ("7",))),
    Variant("adverse_events", "UNKNOWN_SUBJECT", "unknown_subject"),
    Variant("adverse_events", "CONFLICTING_DUPLICATE", "conflicting_duplicate", ("severity",)),
    Variant("adverse_events", "INCONSISTENT", "end_before_onset"),
    Variant("adverse_events", DUPLICATE, "identical_duplicate"),
)
REDCAP_PLAN = DefectPlan(
    REDCAP_PARTICIPANT_VARIANTS,
    REDCAP_ROW_VARIANTS,
    {**FLAG_METHODS, "FORM_INCOMPLETE": ("flag_form_incomplete",), "TOTAL_MISMATCH": ("flag_total_mismatch",)},
)
FORM_INCOMPLETE_STATUS = 0


class RedcapInjector(DefectInjector):
    """Defects as a REDCap export holds them: an assessment's date, rater and record are its form's, so those
    defects take every item of one form (a "form" is the item rows of one built assessment); form statuses
    and calculated totals add the FORM_INCOMPLETE and TOTAL_MISMATCH flags."""

    plan = REDCAP_PLAN

    def _num(self, table: Table, name: str, default: int) -> np.ndarray:
        """A per-row number the REDCap writer reads (form status, total offset), created on first use."""
        if name not in table.num:
            table.num[name] = np.full(table.capacity, default, dtype=np.int64)
        return table.num[name]

    def _pick_forms(self, count: int, where: np.ndarray, by_rows: bool = True) -> list[np.ndarray]:
        """Built assessments none of whose item rows carries anything yet: up to `count` item rows' worth
        (or `count` forms), as arrays of their item rows."""
        table = self.tables["assessment_items"]
        base = table.base_rows
        if base == 0 or count <= 0:
            return []
        block = table.num["block"][:base]
        taken = (table.used[:base] | ~table.alive[:base]).astype(np.float64)
        busy = np.bincount(block, weights=taken, minlength=int(block.max()) + 1) > 0
        first = np.zeros(table.capacity, dtype=bool)
        first[:base] = (table.num["item"][:base] == 1) & ~busy[block]
        leads = self.rng.permutation(self.pick("assessment_items", count, first & where))
        sizes = table.num["n_items"][leads]
        keep = int(np.searchsorted(np.cumsum(sizes), count) + 1) if by_rows else count
        return [lead + np.arange(size) for lead, size in zip(leads[:keep].tolist(), sizes[:keep].tolist(), strict=True)]

    def form_impossible_date(self, dataset: str, column: str, count: int) -> int:
        table = self.tables[dataset]
        forms = self._pick_forms(count, self.present(table, column))
        for rows in forms:
            year = int(_years(table.num[column][rows[:1]])[0])
            text = self.dialect.impossible_date(year, int(self.rng.integers(0, len(IMPOSSIBLE_DAYS))))
            self.corrupt(dataset, column, rows, text, "UNPARSEABLE")
        return sum(len(rows) for rows in forms)

    def form_blank(self, dataset: str, column: str, count: int) -> int:
        forms = self._pick_forms(count, self.present(self.tables[dataset], column))
        for rows in forms:
            self.corrupt(dataset, column, rows, self.dialect.empty, "MISSING_REQUIRED")
        return sum(len(rows) for rows in forms)

    def form_unknown_subject(self, dataset: str, count: int) -> int:
        """A form under a record without a participant. Only at events that hold assessments alone, so the
        copy's export row carries no enrollment form and no session (DTS §4 events)."""
        table = self.tables[dataset]
        visits = self.design.assessment_visits
        alone = np.array([self.design.visits[v].kind == "assessment" and v != SCREENING for v in visits])
        forms = self._pick_forms(min(count, self.next_unknown - self.trial.n), alone[table.num["visit"]])
        foreign = self.rng.random(len(forms)) < 0.5
        for rows, other_site in zip(forms, foreign.tolist(), strict=True):
            copies = table.copy_rows(rows, table.base_rows + 0.5 + np.arange(len(rows)) / 1000)
            record = self._unknown_id(int(table.subject[rows[0]]), other_site)
            table.subject[copies] = -1
            table.used[rows] = True
            self.corrupt(dataset, "subject_id", copies, record, "UNKNOWN_SUBJECT")
        return sum(len(rows) for rows in forms)

    def flag_form_incomplete(self, flag_type: str, count: int) -> int:
        """Forms saved at status 0: their data lands flagged. Never a form a derivation leans on: BL
        assessments date the study, dosing sessions anchor windows; participants and AEs stay complete."""
        done = 0
        kinds = self.rng.permutation(3).tolist()
        for left, kind in zip(range(len(kinds), 0, -1), kinds, strict=True):
            share = -(-(count - done) // left)
            if kind == 0:
                table = self.tables["assessment_items"]
                later = np.array([v != BASELINE for v in self.design.assessment_visits])
                for rows in self._pick_forms(share, later[table.num["visit"]], by_rows=False):
                    self._num(table, "status", -1)[rows] = FORM_INCOMPLETE_STATUS
                    table.used[rows] = True
                    done += self.flag(flag_type, "assessment_items", table.subject[rows[:1]],
                                      self._visit_codes(table, rows[:1]))
                continue
            dataset = "vitals" if kind == 1 else "sessions"
            table = self.tables[dataset]
            where = None if kind == 1 else np.isin(table.num["kind"], ("PREPARATION", "INTEGRATION"))
            rows = self.pick(dataset, share, where)
            self._num(table, "status", -1)[rows] = FORM_INCOMPLETE_STATUS
            table.used[rows] = True
            done += self.flag(flag_type, dataset, table.subject[rows], self._visit_codes(table, rows))
        return done

    def flag_total_mismatch(self, flag_type: str, count: int) -> int:
        """A calculated total a few points off the sum of its items (the items win, DTS §4)."""
        table = self.tables["assessment_items"]
        with_total = np.array([ins.has_total for ins in self.design.instruments.values()])
        forms = self._pick_forms(count, with_total[table.num["instrument"]], by_rows=False)
        offsets = self._num(table, "total_offset", 0)
        for rows in forms:
            total, step = int(table.num["score"][rows].sum()), int(self.rng.integers(1, 4))
            offsets[rows] = step if total < step or self.rng.random() < 0.5 else -step
            table.used[rows] = True
        leads = np.array([rows[0] for rows in forms], dtype=np.int64)
        return self.flag(flag_type, "assessment_items", table.subject[leads], self._visit_codes(table, leads))


# --------------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class WrittenFile:
    name: str
    data: bytes
    rows: int | dict[str, int]  # data rows; for a workbook, per sheet (DTS §2.1)


@dataclass
class SiteExport:
    source: str
    transfer_id: str
    dialect: Dialect
    tables: dict[str, Table]
    columns: dict[str, list[str]]
    trial: SiteTrial
    injector: DefectInjector
    fmt: str = "dts-csv"
    # Choices of presentation only (date cell or text, form statuses): never the data or its defects.
    render_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    # Set by the writer: dataset -> (source file, line of each table row in it, -1 if not delivered).
    located: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)


def _quote(text: str, delimiter: str) -> str:
    if delimiter in text or '"' in text or "\n" in text or "\r" in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _string_bytes(array: pa.Array) -> bytes:
    """A string array's UTF-8 bytes without a Python loop: its data buffer from first to last offset."""
    if len(array) == 0:
        return b""
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    return array.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_pybytes()


def _encode(utf8: bytes, encoding: str) -> bytes:
    if encoding == "utf-8":
        return utf8
    if encoding == "utf-8-sig":
        return codecs.BOM_UTF8 + utf8
    return utf8.decode("utf-8").encode(encoding)


def render_csv(table: Table, columns: Sequence[str], dialect: Dialect, name: str) -> WrittenFile:
    order = table.final_order()
    delimiter, newline = dialect.delimiter, dialect.newline
    header = delimiter.join(_quote(c, delimiter) for c in columns) + newline
    arrays = []
    for column in columns:
        col = table.cols[column]
        labels = pa.array([_quote(label, delimiter) for label in col.labels], type=pa.string())
        arrays.append(labels.take(pa.array(col.codes[order])))
    body = b""
    if len(order):
        lines = pc.binary_join_element_wise(*arrays, delimiter) if len(arrays) > 1 else arrays[0]
        body = _string_bytes(pc.binary_join_element_wise(lines, "", newline))
    return WrittenFile(name, _encode(header.encode("utf-8") + body, dialect.encoding), len(order))


def _column_order(rng: np.random.Generator, table: Table, dataset: str, shuffle: bool) -> list[str]:
    columns = [*DTS_COLUMNS[dataset], *(c for c in table.cols if c not in DTS_COLUMNS[dataset])]
    return [columns[i] for i in rng.permutation(len(columns))] if shuffle else columns


def _locate(export: SiteExport, dataset: str, source_file: str, rows: np.ndarray, lines: np.ndarray) -> None:
    """Record where each delivered record of a dataset sits: file (or `workbook!sheet`) and line (header = 1)."""
    table = export.tables[dataset]
    located = np.full(table.capacity, -1, dtype=np.int64)
    located[rows] = lines
    export.located[dataset] = (source_file, located)


def write_dts_csv(export: SiteExport) -> list[WrittenFile]:
    files = []
    for ds, name in DATASET_FILES.items():
        table = export.tables[ds]
        files.append(render_csv(table, export.columns[ds], export.dialect, name))
        order = table.final_order()
        _locate(export, ds, name, order, np.arange(len(order)) + 2)
    return files


# --------------------------------------------------------------------------------------------------
# dts-xlsx: one workbook, a sheet per dataset (DTS §3)

XLSX_FILE = "export.xlsx"
XLSX_TEXT_DATE_SHARE = 0.2  # dates typed as text in the site's format rather than entered as date cells
XLSX_KINDS = {
    **dict.fromkeys(
        (
            "screening_date",
            "consent_date",
            "withdrawal_date",
            "session_date",
            "assessment_date",
            "onset_date",
            "end_date",
            "date_of_birth",
            "dob",
        ),
        "date",
    ),
    **dict.fromkeys(
        ("birth_year", "duration_min", "infusion_min", "sbp", "dbp", "hr", "spo2", "item", "score"), "integer"
    ),
    **dict.fromkeys(("weight_kg", "dose_mg"), "decimal"),
}


def xlsx_sheet(dataset: str) -> str:
    return DATASET_FILES[dataset].removesuffix(".csv")


def delivered_column(column: str, dialect: Dialect) -> str:
    """The header a column is delivered under: weights in pounds are `weight_lb` (DTS §3)."""
    return "weight_lb" if column == "weight_kg" and dialect.weight_unit == "lb" else column


def _cell_value(label: str, kind: str, dialect: Dialect) -> Any:
    """What a site's spreadsheet holds for a value: numbers as numbers (the missing code too), the rest as
    text; anything that does not read as its type (`7o.5`, `three`, 31 February) stays the text it is."""
    if label == "":
        return None
    if re.fullmatch(r"-?\d+", label) and (kind == "integer" or kind == "decimal" or label in dialect.missing):
        return int(label)
    if kind == "decimal" and re.fullmatch(r"-?\d+" + re.escape(dialect.decimal) + r"\d+", label):
        return float(label.replace(dialect.decimal, "."))
    if kind == "date":
        try:
            return datetime.strptime(label, dialect.date_format).date()
        except ValueError:
            return label
    return label


def _xlsx_values(export: SiteExport, ws: Any, table: Table, column: str, order: np.ndarray) -> np.ndarray:
    """One column's cell values in file order, through its labels (the dictionary encoding of `Col`)."""
    from openpyxl.cell import WriteOnlyCell

    col = table.cols[column]
    kind = XLSX_KINDS.get(column, "text")
    values = np.empty(len(col.labels), dtype=object)
    values[:] = [_cell_value(label, kind, export.dialect) for label in col.labels]
    if kind != "date":
        return values[col.codes[order]]
    rng = export.render_rng
    # Date cells show in one of two number formats; what was typed as text is the site's own format.
    shown = rng.random(len(values)) < 0.5
    for i, value in enumerate(values.tolist()):
        if isinstance(value, date) and shown[i]:
            cell = WriteOnlyCell(ws, value=value)
            cell.number_format = "mm-dd-yy"
            values[i] = cell
    typed = np.empty(len(col.labels), dtype=object)
    typed[:] = [_cell_value(label, "text", export.dialect) for label in col.labels]
    # Chosen per built row, so a duplicated row shows its dates exactly as its original does.
    as_text = (rng.random(table.base_rows) < XLSX_TEXT_DATE_SHARE)[table.origin[order]]
    codes = col.codes[order]
    return np.where(as_text, typed[codes], values[codes])


def _pinned_workbook(data: bytes, properties: Any, moment: datetime) -> bytes:
    """The saved workbook with its timestamps pinned to the export time (docProps/core.xml and each zip
    entry), so the same seed writes the same bytes."""
    import zipfile

    from openpyxl.xml.functions import tostring

    stamp = moment.astimezone(UTC).replace(tzinfo=None)
    properties.created = properties.modified = stamp
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            body = tostring(properties.to_tree()) if info.filename == "docProps/core.xml" else source.read(info)
            entry = zipfile.ZipInfo(info.filename, date_time=stamp.timetuple()[:6])
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.create_system = 3
            entry.external_attr = 0o644 << 16
            target.writestr(entry, body)
    return out.getvalue()


def write_dts_xlsx(export: SiteExport) -> list[WrittenFile]:
    """`export.xlsx` with one sheet per dataset, header in row 1 (DTS §3), written by openpyxl in
    write-only mode: dates mostly as date cells, some typed as text in the site's format, the site's missing
    code as the number it is typed as, weights in pounds when the site's dialect says so."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    rows: dict[str, int] = {}
    for dataset in DATASET_FILES:
        sheet = xlsx_sheet(dataset)
        ws = workbook.create_sheet(sheet)
        table, columns = export.tables[dataset], export.columns[dataset]
        ws.append([delivered_column(c, export.dialect) for c in columns])
        order = table.final_order()
        for row in zip(*(_xlsx_values(export, ws, table, c, order).tolist() for c in columns), strict=True):
            ws.append(row)
        rows[sheet] = len(order)
        _locate(export, dataset, f"{XLSX_FILE}!{sheet}", order, np.arange(len(order)) + 2)
    buffer = io.BytesIO()
    workbook.save(buffer)
    moment = datetime.strptime(export.transfer_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return [WrittenFile(XLSX_FILE, _pinned_workbook(buffer.getvalue(), workbook.properties, moment), rows)]


# --------------------------------------------------------------------------------------------------
# redcap: the trial's REDCap project template, its raw export and data dictionary (DTS §4)

REDCAP_EXPORT = "redcap_export.csv"
REDCAP_DICTIONARY = "data_dictionary.csv"
REDCAP_DIALECT = Dialect(",", ".", "utf-8", "%Y-%m-%d", ("",), "\n")
REDCAP_DICTIONARY_COLUMNS = (
    "Variable / Field Name",
    "Form Name",
    "Section Header",
    "Field Type",
    "Field Label",
    "Choices, Calculations, OR Slider Labels",
    "Field Note",
    "Text Validation Type OR Show Slider Number",
    "Text Validation Min",
    "Text Validation Max",
    "Identifier?",
    "Branching Logic (Show field only if...)",
    "Required Field?",
    "Custom Alignment",
    "Question Number (surveys only)",
    "Matrix Group Name",
    "Matrix Ranking?",
    "Field Annotation",
)
REDCAP_ID_COLUMNS = (
    "record_id",
    "redcap_event_name",
    "redcap_repeat_instrument",
    "redcap_repeat_instance",
    "redcap_data_access_group",
)
REDCAP_REPEATING = ("vital_signs", "adverse_events")  # repeating instruments, in export order
REDCAP_AE_EVENT = "ae_log_arm_1"
REDCAP_ITEM_LABELS = {"CSSRS": "C-SSRS question {k}"}
REDCAP_STATUS_SHARE = {2: 0.92, 1: 0.08}  # form statuses as sites leave them: Complete, some Unverified
REDCAP_EXTRA_TICK = 0.05  # AEs whose less severe action box is ticked too (the most severe counts)
YES_NO = (("1", "Y"), ("0", "N"))
PERSONAL_LABELS = {
    "initials": "Initials",
    "date_of_birth": "Date of birth",
    "dob": "Date of birth",
    "mrn": "Medical record number",
    "nhs_number": "NHS number",
    "email": "E-mail",
}


@dataclass(frozen=True)
class RedcapField:
    """One field of the REDCap project, and the DTS column (or item) whose value it carries."""

    name: str
    form: str
    kind: str  # REDCap field type: text, notes, radio, dropdown, yesno, checkbox, calc
    label: str
    choices: tuple[tuple[str, str], ...] = ()  # (raw code, DTS code)
    validation: str = ""
    low: str = ""
    high: str = ""
    required: bool = False
    identifier: bool = False
    calculation: str = ""
    column: str = ""  # the DTS column it carries; "score" with `item` for an assessment item
    item: int = 0

    @property
    def codes(self) -> dict[str, str]:
        """DTS code -> raw code of a coded field (yesno: 1 Y, 0 N)."""
        return {label: code for code, label in (YES_NO if self.kind == "yesno" else self.choices)}

    @property
    def export_columns(self) -> list[str]:
        return [f"{self.name}___{code}" for code, _ in self.choices] if self.kind == "checkbox" else [self.name]

    def dictionary_row(self) -> list[str]:
        choices = self.calculation or " | ".join(f"{code}, {label}" for code, label in self.choices)
        yes = {True: "y", False: ""}
        return [self.name, self.form, "", self.kind, self.label, choices, "", self.validation, self.low,
                self.high, yes[self.identifier], "", yes[self.required], "", "", "", "", ""]


def _coded(*labels: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(i), label) for i, label in enumerate(labels, start=1))


def redcap_template(design: StudyDesign, personal_data: Sequence[str] = ()) -> list[RedcapField]:
    """The trial's REDCap project: its fields in form order, as its data dictionary lists them (DTS §4),
    plus the personal-data fields a site added to its enrollment form."""
    f = RedcapField
    date = {"validation": "date_ymd"}
    fields = [
        f("record_id", "enrollment", "text", "Record ID", column="subject_id"),
        f("scr_date", "enrollment", "text", "Screening date", **date, required=True, column="screening_date"),
        f("consent_date", "enrollment", "text", "Consent date", **date, required=True, column="consent_date"),
        f("birth_year", "enrollment", "text", "Year of birth", validation="integer", low="1900", high="2010",
          required=True, column="birth_year"),
        f("sex", "enrollment", "radio", "Sex", _coded("F", "M", "X"), required=True, column="sex"),
        f("weight_kg", "enrollment", "text", "Weight (kg)", validation="number", low="30", high="250",
          required=True, column="weight_kg"),
        f("prior_ect", "enrollment", "yesno", "Prior ECT", required=True, column="prior_ect"),
        *(
            f(name, "enrollment", "text", PERSONAL_LABELS.get(name, name.replace("_", " ").capitalize()),
              validation="date_ymd" if name in ("date_of_birth", "dob") else "", identifier=True, column=name)
            for name in personal_data
        ),
        f("status", "study_status", "dropdown", "Participant status",
          _coded("SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED", "WITHDRAWN"), required=True,
          column="status"),
        f("withdrawal_date", "study_status", "text", "Withdrawal date", **date, column="withdrawal_date"),
        f("withdrawal_reason", "study_status", "notes", "Withdrawal reason", column="withdrawal_reason"),
    ]
    for code, ins in design.instruments.items():
        form = code.lower()
        fields.append(f(f"{form}_date", form, "text", f"{code} date", **date, column="assessment_date"))
        if ins.rater_required:
            fields.append(f(f"{form}_rater", form, "text", "Rater ID", column="rater_id"))
        yes_no = (ins.item_min, ins.item_max) == (0, 1)
        scale = tuple((str(v), str(v)) for v in range(ins.item_min, ins.item_max + 1))
        label = REDCAP_ITEM_LABELS.get(code, code + " item {k}")
        for k in range(1, ins.items + 1):
            kind, choices = ("yesno", ()) if yes_no else ("radio", scale)
            fields.append(f(f"{form}_{k}", form, kind, label.format(k=k), choices, column="score", item=k))
        if ins.has_total:
            total = "sum(" + ",".join(f"[{form}_{k}]" for k in range(1, ins.items + 1)) + ")"
            fields.append(f(f"{form}_total", form, "calc", f"{code} total", calculation=total))
    fields += [
        f("dose_date", "dosing", "text", "Dosing date", **date, column="session_date"),
        f("dose_time", "dosing", "text", "Session start", validation="time", column="start_time"),
        f("dose_route", "dosing", "dropdown", "Route", _coded("IV", "IM", "SL", "IN"), column="route"),
        f("dose_mg", "dosing", "text", "Dose (mg)", validation="number", low="0", high="800", column="dose_mg"),
        f("dose_weight_kg", "dosing", "text", "Weight at dosing (kg)", validation="number", low="30", high="250",
          column="weight_kg"),
        f("dose_infusion_min", "dosing", "text", "Infusion duration (min)", validation="integer", low="1",
          high="240", column="infusion_min"),
        f("dose_duration_min", "dosing", "text", "Session duration (min)", validation="integer", low="5",
          high="600", column="duration_min"),
        f("dose_therapist", "dosing", "text", "Therapist ID", column="therapist_id"),
        f("dose_attended", "dosing", "yesno", "Attended", column="attended"),
        f("ts_date", "therapy_session", "text", "Session date", **date, column="session_date"),
        f("ts_time", "therapy_session", "text", "Start time", validation="time", column="start_time"),
        f("ts_duration_min", "therapy_session", "text", "Duration (min)", validation="integer", low="5",
          high="600", column="duration_min"),
        f("ts_therapist", "therapy_session", "text", "Therapist ID", column="therapist_id"),
        f("ts_attended", "therapy_session", "yesno", "Attended", column="attended"),
        f("vs_timepoint", "vital_signs", "dropdown", "Timepoint", _coded("PRE", "T40", "T120"), column="timepoint"),
        f("vs_time", "vital_signs", "text", "Time measured", validation="time", column="measured_time"),
        f("vs_sbp", "vital_signs", "text", "Systolic BP", validation="integer", low="50", high="300", column="sbp"),
        f("vs_dbp", "vital_signs", "text", "Diastolic BP", validation="integer", low="20", high="200", column="dbp"),
        f("vs_hr", "vital_signs", "text", "Heart rate", validation="integer", low="20", high="250", column="hr"),
        f("vs_spo2", "vital_signs", "text", "SpO2", validation="integer", low="50", high="100", column="spo2"),
        f("ae_id", "adverse_events", "text", "AE ID", column="ae_id"),
        f("ae_term", "adverse_events", "text", "Verbatim term", column="term"),
        f("ae_onset", "adverse_events", "text", "Onset date", **date, column="onset_date"),
        f("ae_end", "adverse_events", "text", "End date", **date, column="end_date"),
        f("ae_severity", "adverse_events", "dropdown", "Severity", _coded("MILD", "MODERATE", "SEVERE"),
          column="severity"),
        f("ae_serious", "adverse_events", "yesno", "Serious", column="serious"),
        f("ae_related", "adverse_events", "dropdown", "Relatedness",
          _coded("NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"), column="related"),
        f("ae_outcome", "adverse_events", "dropdown", "Outcome",
          _coded("RECOVERED", "RECOVERING", "NOT_RECOVERED", "RECOVERED_WITH_SEQUELAE", "FATAL", "UNKNOWN"),
          column="outcome"),
        f("ae_action", "adverse_events", "checkbox", "Action taken",
          _coded("NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN"), column="action"),
    ]
    return fields


def redcap_events(design: StudyDesign) -> list[tuple[str, str | None]]:
    """(event, visit) in the project's event order (DTS §4); the AE log last, with no visit."""
    order = [SCREENING, BASELINE, *design.visits_of_kind("PREPARATION")]
    for dose in design.dosing_visits:
        following = [v for v, rule in design.visits.items() if rule.anchor == dose]
        order += [dose, *sorted(following, key=lambda v: design.visits[v].kind != "assessment")]
    order += [v for v in design.assessment_visits if v not in order]
    return [*((redcap_event_name(v), v) for v in order), (REDCAP_AE_EVENT, None)]


def redcap_event_name(visit: str) -> str:
    """SCR -> screening_arm_1, PREP1 -> prep_1_arm_1, D1P24 -> post_dose_1_24h_arm_1, W12 -> week_12_arm_1."""
    after = re.fullmatch(r"D(\d+)P(\d+)", visit)
    if after:
        return f"post_dose_{after.group(1)}_{after.group(2)}h_arm_1"
    stem, number = re.fullmatch(r"([A-Z]+?)(\d*)", visit).groups()  # type: ignore[union-attr]
    words = {"SCR": "screening", "BL": "baseline", "PREP": "prep", "D": "dose", "INT": "integration", "W": "week"}
    return "_".join(p for p in (words.get(stem, stem.lower()), number) if p) + "_arm_1"


# The dataset whose records each form holds; every other form is an instrument's (assessment items).
REDCAP_FORM_DATASETS = {
    "enrollment": "participants",
    "study_status": "participants",
    "dosing": "sessions",
    "therapy_session": "sessions",
    "vital_signs": "vitals",
    "adverse_events": "adverse_events",
}


class _Grid:
    """The export's columns as codes into labels, one code per line (0 = empty), filled dataset by dataset."""

    def __init__(self, lines: int) -> None:
        self.lines = lines
        self.cols: dict[str, tuple[np.ndarray, list[str]]] = {}

    def put(self, column: str, lines: np.ndarray, codes: np.ndarray, labels: Sequence[str]) -> None:
        target, known = self.cols.setdefault(column, (np.zeros(self.lines, dtype=np.int32), [""]))
        target[lines] = np.asarray(codes, dtype=np.int32) + len(known)
        known.extend(labels)

    def put_col(self, column: str, lines: np.ndarray, col: Col, rows: np.ndarray, codes: Mapping[str, str]) -> None:
        """A table column's values on their lines, DTS codes turned into raw codes (others pass as they are)."""
        self.put(column, lines, col.codes[rows], [codes.get(label, label) for label in col.labels])

    def texts(self, values: Sequence[str], lines: np.ndarray, column: str) -> None:
        self.put(column, lines, np.arange(len(values)), values)

    def table(self, columns: Sequence[str]) -> Table:
        cols = {c: Col(*self.cols.get(c, (np.zeros(self.lines, dtype=np.int32), [""]))) for c in columns}
        return Table("redcap", cols, np.arange(self.lines))


def _first_per_line(lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct lines and, for each, the position of its first row."""
    return np.unique(lines, return_index=True)


def _statuses(export: SiteExport, table: Table, rows: np.ndarray) -> np.ndarray:
    """Form status per row: an injected 0, else drawn per built row (a copy shows its original's status)."""
    codes = np.array(list(REDCAP_STATUS_SHARE))
    drawn = export.render_rng.choice(codes, table.base_rows, p=list(REDCAP_STATUS_SHARE.values()))
    status = drawn[table.origin[rows]]
    injected = table.num.get("status")
    return status if injected is None else np.where(injected[rows] >= 0, injected[rows], status)


@dataclass
class RedcapLayout:
    """The export's lines: per line its (record rank, event, repeating instrument, instance) key, sorted as
    REDCap exports them, and per dataset the table rows delivered and the line each sits on."""

    records: list[str]
    keys: np.ndarray
    located: dict[str, tuple[np.ndarray, np.ndarray]]


def redcap_layout(export: SiteExport, events: list[tuple[str, str | None]]) -> RedcapLayout:
    """One line per record x event, one per instance of a repeating instrument (numbered from 1 per
    record, event and instrument in file order); lines sorted by record, event order, instrument, instance."""
    event_index = {visit: i for i, (_, visit) in enumerate(events) if visit}
    rows_of, records_of, events_of = {}, [], {}
    for dataset, table in export.tables.items():
        rows = rows_of[dataset] = table.final_order()
        subject = table.cols["subject_id"]
        records_of.append(np.array(subject.labels, dtype=object)[subject.codes[rows]])
        if dataset == "participants":
            events_of[dataset] = np.full(len(rows), event_index[SCREENING])
        elif dataset == "adverse_events":
            events_of[dataset] = np.full(len(rows), len(events) - 1)
        else:
            visit = table.cols["visit"]
            events_of[dataset] = np.array([event_index[v] for v in visit.labels], dtype=np.int64)[visit.codes[rows]]
    records, rank = np.unique(np.concatenate(records_of).astype(str), return_inverse=True)
    bounds = np.cumsum([0, *(len(rows) for rows in rows_of.values())])
    keys = []
    for (dataset, rows), start, stop in zip(rows_of.items(), bounds[:-1], bounds[1:], strict=True):
        form = REDCAP_REPEATING_FORMS.get(dataset)
        repeat = REDCAP_REPEATING.index(form) + 1 if form else 0
        record_rank, event = rank.ravel()[start:stop], events_of[dataset]
        instance = np.zeros(len(rows), dtype=np.int64)
        if repeat:
            group = record_rank * len(events) + event
            order = np.argsort(group, kind="stable")
            ordered = group[order]
            instance[order] = np.arange(len(rows)) - np.searchsorted(ordered, ordered) + 1
        keys.append(np.stack([record_rank, event, np.full(len(rows), repeat), instance], axis=1))
    unique, line = np.unique(np.concatenate(keys).reshape(-1, 4), axis=0, return_inverse=True)
    line = line.ravel()
    located = {
        dataset: (rows, line[start:stop])
        for (dataset, rows), start, stop in zip(rows_of.items(), bounds[:-1], bounds[1:], strict=True)
    }
    return RedcapLayout([str(r) for r in records], unique, located)


REDCAP_REPEATING_FORMS = {"vitals": "vital_signs", "adverse_events": "adverse_events"}


def write_redcap(export: SiteExport) -> list[WrittenFile]:
    """The raw export `redcap_export.csv` and the project's `data_dictionary.csv` (DTS §4): one row per
    record x event and per repeating instance; choices, yes/no and checkboxes as raw codes; each form's
    `<form>_complete` status; calculated totals as REDCap computes them, blank when an item is not a valid
    score, a few points off where a TOTAL_MISMATCH was injected. Each conformed record's line is recorded."""
    design = export.injector.design
    personal = [c for c in export.tables["participants"].cols if c in PERSONAL_COLUMNS]
    template = redcap_template(design, personal)
    events = redcap_events(design)
    layout = redcap_layout(export, events)
    keys = layout.keys
    grid = _Grid(len(keys))
    grid.put("record_id", np.arange(len(keys)), keys[:, 0], layout.records)
    grid.put("redcap_event_name", np.arange(len(keys)), keys[:, 1], [e for e, _ in events])
    grid.put("redcap_repeat_instrument", np.arange(len(keys)), keys[:, 2], ["", *REDCAP_REPEATING])
    instances = [str(i) for i in range(1, int(keys[:, 3].max(initial=0)) + 1)]
    grid.put("redcap_repeat_instance", np.arange(len(keys)), keys[:, 3], ["", *instances])
    grid.put("redcap_data_access_group", np.arange(len(keys)), np.zeros(len(keys)), [export.source.lower()])
    forms: dict[str, list[RedcapField]] = {}
    for fld in template:
        forms.setdefault(fld.form, []).append(fld)
    for form, fields in forms.items():
        dataset = REDCAP_FORM_DATASETS.get(form, "assessment_items")
        table = export.tables[dataset]
        rows, lines = layout.located[dataset]
        if dataset == "sessions":
            dosing = np.isin(np.array(table.cols["visit"].labels, dtype=object), design.dosing_visits)
            mine = dosing[table.cols["visit"].codes[rows]] == (form == "dosing")
            rows, lines = rows[mine], lines[mine]
        elif dataset == "assessment_items":
            instrument = table.cols["instrument"]
            mine = np.array(instrument.labels, dtype=object)[instrument.codes[rows]] == form.upper()
            rows, lines = rows[mine], lines[mine]
        _put_form(export, grid, form, fields, table, rows, lines)
    columns = [*REDCAP_ID_COLUMNS]
    for form, fields in forms.items():
        columns += [c for fld in fields if fld.name != "record_id" for c in fld.export_columns]
        columns.append(f"{form}_complete")
    export_file = render_csv(grid.table(columns), columns, REDCAP_DIALECT, REDCAP_EXPORT)
    for dataset, (rows, lines) in layout.located.items():
        _locate(export, dataset, REDCAP_EXPORT, rows, lines + 2)
    return [export_file, render_redcap_dictionary(template)]


def _put_form(
    export: SiteExport, grid: _Grid, form: str, fields: list[RedcapField], table: Table, rows: np.ndarray,
    lines: np.ndarray,
) -> None:
    """One form's fields on the lines of its records. An assessment's records share their form's row: the
    form-level fields (date, rater, total, status) come from its first item record."""
    if len(rows) == 0:
        return
    assessment = table.dataset == "assessment_items"
    first_lines, first = _first_per_line(lines) if assessment else (lines, np.arange(len(rows)))
    for fld in fields:
        if fld.name == "record_id" or fld.kind == "calc":
            continue
        if fld.item:
            item = table.cols["item"]
            mine = np.array(item.labels, dtype=object)[item.codes[rows]] == str(fld.item)
            grid.put_col(fld.name, lines[mine], table.cols["score"], rows[mine], {})
        elif fld.kind == "checkbox":
            _put_checkbox(export, grid, fld, table, rows, lines)
        else:
            col = table.cols[fld.column]
            # A form's fields are one value per row: every record of an assessment's form must agree on them.
            if assessment and np.any(col.codes[rows] != col.codes[rows[first]][np.searchsorted(first_lines, lines)]):
                raise AssertionError(f"{export.source}: records of one {form} form differ in {fld.column}")
            grid.put_col(fld.name, first_lines, col, rows[first], fld.codes)
    if any(fld.kind == "calc" for fld in fields):
        _put_total(grid, form, table, rows, lines, first_lines, first)
    status = _statuses(export, table, rows[first])
    grid.put(f"{form}_complete", first_lines, status, ["0", "1", "2"])


def _put_total(
    grid: _Grid, form: str, table: Table, rows: np.ndarray, lines: np.ndarray, first_lines: np.ndarray,
    first: np.ndarray,
) -> None:
    """REDCap's sum of the form's items (blank items add nothing); left blank when an item is not a valid
    score, so no total can be read against quarantined items; an injected offset makes a TOTAL_MISMATCH."""
    score = table.cols["score"]
    values = np.array([int(s) if re.fullmatch(r"\d+", s) else np.nan for s in score.labels])[score.codes[rows]]
    where = np.searchsorted(first_lines, lines)
    sums = np.bincount(where, weights=values, minlength=len(first_lines))
    in_score = (table.reason_col[rows] == "score").astype(np.float64)
    faulty = np.bincount(where, weights=in_score, minlength=len(first_lines)) > 0
    offsets = table.num["total_offset"][rows[first]] if "total_offset" in table.num else np.zeros(len(first))
    ok = ~faulty & ~np.isnan(sums)
    totals = (sums[ok] + offsets[ok]).astype(np.int64)
    grid.texts([str(t) for t in totals.tolist()], first_lines[ok], f"{form}_total")


def _put_checkbox(
    export: SiteExport, grid: _Grid, fld: RedcapField, table: Table, rows: np.ndarray, lines: np.ndarray
) -> None:
    """One 0/1 column per choice; the action's box is ticked, now and then a less severe one too (the most
    severe ticked box counts, DTS §4); a missing action ticks none."""
    col = table.cols[fld.column]
    box = np.array([int(fld.codes.get(label, 0)) for label in col.labels])[col.codes[rows]]
    extra = (export.render_rng.random(table.base_rows) < REDCAP_EXTRA_TICK)[table.origin[rows]] & (box >= 2)
    for code, _ in fld.choices:
        ticked = (box == int(code)) | (extra & (box - 1 == int(code)))
        grid.put(f"{fld.name}___{code}", lines, ticked.astype(np.int32), ["0", "1"])


def render_redcap_dictionary(template: Sequence[RedcapField]) -> WrittenFile:
    lines = [REDCAP_DICTIONARY_COLUMNS, *(fld.dictionary_row() for fld in template)]
    text = "".join(",".join(_quote(v, ",") for v in line) + "\n" for line in lines)
    return WrittenFile(REDCAP_DICTIONARY, text.encode("utf-8"), len(template))


# One writer per delivery format (DTS §2); a source of any other format is skipped and reported.
SITE_WRITERS: dict[str, Callable[[SiteExport], list[WrittenFile]]] = {
    "dts-csv": write_dts_csv,
    "dts-xlsx": write_dts_xlsx,
    "redcap": write_redcap,
}


def write_transfer(
    out: Path, study: str, source: str, transfer_id: str, fmt: str, files: Sequence[WrittenFile]
) -> Path:
    folder = out / source / transfer_id
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).write_bytes(f.data)
    manifest = {
        "study": study,
        "source": source,
        "transfer_id": transfer_id,
        "format": fmt,
        "files": [
            {"name": f.name, "sha256": hashlib.sha256(f.data).hexdigest(), "rows": f.rows} for f in files
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------------
# Orchestration


def _export_day(moment: datetime, timezone: str | None) -> int:
    """Last local day the export can hold: the day before the export's local date."""
    try:
        zone = ZoneInfo(timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return (moment.astimezone(zone).date() - EPOCH).days - 1


def build_site_export(
    seed: int,
    source: str,
    settings: Mapping[str, Any],
    design: StudyDesign,
    n: int,
    moment: datetime,
    transfer_id: str,
    profile: SiteProfile,
    defect_rate: float,
    fmt: str = "dts-csv",
) -> SiteExport:
    """One site's simulated trial as delivered in `fmt`. The simulation draws only from the site's own random
    stream, before anything format-dependent, so every format holds the same people, visits and values."""
    rng = _rng(seed, source, 0)
    dialect = site_dialect(settings, fmt)
    trial = simulate_site(rng, design, source, n, _export_day(moment, settings.get("timezone")))
    sessions = build_sessions(rng, trial, design, dialect)
    tables = {
        "participants": build_participants(trial, dialect),
        "sessions": sessions,
        "vitals": build_vitals(rng, trial, sessions, dialect),
        "assessment_items": build_assessments(rng, trial, design, dialect),
        "adverse_events": build_adverse_events(rng, trial, design, dialect),
    }
    add_profile_columns(rng, tables, trial, dialect, profile)
    for table in tables.values():
        vary_missing(rng, table, dialect)
    injector_class = RedcapInjector if fmt == "redcap" else DefectInjector
    injector = injector_class(rng, trial, design, dialect, tables, transfer_id)
    inject_defects(injector, defect_rate, trial.n)
    mark_unknown_consequences(injector)
    columns = {ds: _column_order(rng, t, ds, profile.shuffle_columns) for ds, t in tables.items()}
    render_rng = _rng(seed, source, 2)
    return SiteExport(source, transfer_id, dialect, tables, columns, trial, injector, fmt, render_rng)


def site_dialect(settings: Mapping[str, Any], fmt: str) -> Dialect:
    """How a site writes values in `fmt`: a REDCap raw export is REDCap's (ISO dates, `.`, empty); a workbook
    holds numbers as numbers and weights in pounds (`weight_lb`, DTS §2 S06); a CSV follows the registry."""
    if fmt == "redcap":
        return REDCAP_DIALECT
    dialect = Dialect.from_settings(settings)
    return replace(dialect, decimal=".", weight_unit="lb") if fmt == "dts-xlsx" else dialect


def expected_quarantine(export: SiteExport) -> list[dict[str, Any]]:
    """Every record to quarantine, located where the writer put it: its file (or `export.xlsx!<sheet>`) and
    line or sheet row (header = 1). A REDCap row holding several records lists each of them."""
    records = []
    for dataset, table in export.tables.items():
        source_file, lines = export.located[dataset]
        rows = np.flatnonzero(table.alive & (table.reason != ""))
        rows = rows[np.argsort(lines[rows], kind="stable")]
        for row, line in zip(rows.tolist(), lines[rows].tolist(), strict=True):
            records.append(
                {
                    "source": export.source,
                    "transfer_id": export.transfer_id,
                    "dataset": dataset,
                    "source_file": source_file,
                    "source_row": line,
                    "column": delivered_column(table.reason_col[row], export.dialect),
                    "reason_code": table.reason[row],
                }
            )
    return records


def _personal_data(export: SiteExport, columns: Sequence[str]) -> tuple[set[str], set[str]]:
    table = export.tables["participants"]
    order = table.final_order()
    values = {v for c in columns for v in table.cols[c].text(order)} - set(export.dialect.missing)
    dates = (
        {(EPOCH + timedelta(days=int(d))).isoformat() for d in table.num["dob"][order]}
        if "dob" in table.num
        else set()
    )
    return values, dates


def randomization_rows(export: SiteExport) -> list[tuple[int, str, str, str, str]]:
    trial = export.trial
    return [
        (
            int(trial.bl[s]),
            trial.ids[s],
            trial.source,
            str(trial.arm[s]),
            "ECT" if trial.prior_ect[s] else "NO_ECT",
        )
        for s in np.flatnonzero(trial.randomized).tolist()
    ]


def render_randomization(rows: Sequence[tuple[int, str, str, str, str]], dialect: Dialect) -> WrittenFile:
    rows = sorted(rows)
    n = len(rows)
    ids = np.arange(n)
    cols = {
        "subject_id": Col(ids, [r[1] for r in rows]),
        "site_id": _col(np.array([r[2] for r in rows], dtype=object), str, dialect.empty),
        "arm": _col(np.array([r[3] for r in rows], dtype=object), str, dialect.empty),
        "randomized_on": _col(np.array([r[0] for r in rows], dtype=np.int64), dialect.date, dialect.empty),
        "stratum": _col(np.array([r[4] for r in rows], dtype=object), str, dialect.empty),
    }
    return render_csv(Table("randomization", cols, ids), IWRS_COLUMNS, dialect, "randomization.csv")


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return DEFAULT_TRANSFER_TIME
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def generate_trial(
    out: Path,
    *,
    seed: int = 7,
    participants_per_site: int = 30,
    sources: Mapping[str, Mapping[str, Any]] | None = None,
    defect_rate: float = 0.01,
    transfer_time: datetime | None = None,
    study: str = "KAP-TRD-01",
    formats_as: Mapping[str, str] | None = None,
) -> GenerationReport:
    """Write one transfer per site source, in its registered format and dialect (`dts-csv`, `dts-xlsx`,
    `redcap`), and one IWRS list under `out`, plus the report `.generation_report.json`.

    Transfer ids are the export's UTC time: `transfer_time` (default 2026-06-01T02:00Z) plus ten minutes
    per position of the source in the registry, so the same arguments give byte-identical output (the
    workbook's internal timestamps are pinned to that time too). Sources of a format without a writer
    are skipped and listed in `report.skipped`.

    `formats_as` maps a source to the format to render it in instead of its registered one, e.g.
    `{"S01": "redcap"}`. The site's simulated trial (people, visits, values) depends only on the seed and
    the source id, so the same source delivered as `dts-csv`, `dts-xlsx` and `redcap` holds the same data:
    with `defect_rate=0` every format lands the same records (weights from a workbook come in pounds, so
    they agree to the pound's rounding, < 0.03 kg). With defects, `dts-csv` and `dts-xlsx` carry the same
    ones; `redcap` carries those a REDCap export can hold. The manifest names the rendered format, so the
    pipeline must be given a registry in which the source has that format.
    """
    if not 1 <= participants_per_site <= 8999:
        raise ValueError("participants_per_site must be 1..8999 (subject ids have four digits)")
    if not 0 <= defect_rate <= 1:
        raise ValueError("defect_rate must be between 0 and 1")
    registry = {s: dict(v) for s, v in (sources if sources is not None else load_registry()).items()}
    for source, fmt in (formats_as or {}).items():
        if source not in registry or registry[source].get("format") == IWRS_FORMAT or fmt not in SITE_WRITERS:
            raise ValueError(f"formats_as: {source!r} as {fmt!r}: a registered site source and one of "
                             f"{', '.join(SITE_WRITERS)}")
        registry[source]["format"] = fmt
    design = load_study_design()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = _utc(transfer_time)
    report = GenerationReport(out=out)
    profiles = plan_profiles(seed, [s for s, v in registry.items() if v.get("format") in SITE_WRITERS])
    randomized: list[tuple[int, str, str, str, str]] = []
    phi_values: set[str] = set()
    phi_dates: set[str] = set()
    iwrs: list[tuple[str, str]] = []

    for index, (source, settings) in enumerate(registry.items()):
        fmt = str(settings.get("format"))
        transfer_id = (base + timedelta(minutes=MINUTES_BETWEEN_SOURCES * index)).strftime("%Y%m%dT%H%M%SZ")
        if fmt == IWRS_FORMAT:
            iwrs.append((source, transfer_id))
            continue
        writer = SITE_WRITERS.get(fmt)
        if writer is None:
            report.skipped[source] = f"format {fmt!r} has no generator yet"
            continue
        moment = base + timedelta(minutes=MINUTES_BETWEEN_SOURCES * index)
        export = build_site_export(
            seed,
            source,
            settings,
            design,
            participants_per_site,
            moment,
            transfer_id,
            profiles[source],
            defect_rate,
            fmt,
        )
        files = writer(export)
        folder = write_transfer(out, study, source, transfer_id, fmt, files)
        report.transfers.append((source, transfer_id, folder))
        report.formats[source] = fmt
        for dataset, table in export.tables.items():
            # Conformed records delivered: a file's data rows, or the records a REDCap export fans out into.
            report.delivered[(source, dataset)] = int(table.alive.sum())
            report.expected_collapsed[(source, dataset)] = export.injector.collapsed[dataset]
        report.expected_quarantine.extend(expected_quarantine(export))
        report.injected_flags.extend(export.injector.flags)
        if profiles[source].personal_data:
            report.phi_columns[source] = list(profiles[source].personal_data)
            values, dates = _personal_data(export, profiles[source].personal_data)
            phi_values |= values
            phi_dates |= dates
        randomized.extend(randomization_rows(export))

    for source, transfer_id in iwrs:
        written = render_randomization(randomized, Dialect.from_settings(registry[source]))
        folder = write_transfer(out, study, source, transfer_id, IWRS_FORMAT, [written])
        report.transfers.append((source, transfer_id, folder))
        report.formats[source] = IWRS_FORMAT
        report.delivered[(source, "randomization")] = written.rows
        report.expected_collapsed[(source, "randomization")] = 0

    report.phi_values = sorted(phi_values)
    report.phi_dates = sorted(phi_dates)
    summary = report.to_json(
        study=study, seed=seed, participants_per_site=participants_per_site, defect_rate=defect_rate
    )
    (out / REPORT_FILE).write_text(_report_text(summary), encoding="utf-8")
    return report


def _report_text(summary: Mapping[str, Any]) -> str:
    """Indented JSON, except that long lists of records hold one record per line (readable, and fast)."""
    parts = []
    for key, value in summary.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            # One C-encoded dump, split between records: values are codes, ids and file names, never braces.
            text = json.dumps(value, ensure_ascii=False).replace("}, {", "},\n  {")
            text = f"[\n  {text[1:-1]}\n ]"
        else:
            text = json.dumps(value, indent=1, ensure_ascii=False).replace("\n", "\n ")
        parts.append(f" {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"
