"""Generate a demo KAP-TRD-01 trial: one transfer per source, in each site's dialect, with controlled defects.

The generator is the pipeline's test oracle. Every defect it injects is unambiguous under the DTS's
"first reason in table order" rule (DTS §6) and is written to the report with the file line a correct
pipeline must quarantine, so an end-to-end test can compare the warehouse with the report exactly.

Columns are built vectorised as dictionary-encoded strings (integer codes into a small list of labels):
formatting, quoting and encoding then touch only the labels, and a file is one Arrow `take` per column
and one `binary_join_element_wise`, so 100 sites x 300 participants (millions of item rows) stay fast.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
        "weight_kg": _col(trial.weight10, d.decimal1, e),
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
        "weight_kg": _col(weight10, d.decimal1, e, dosing),
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
CONFLICT_STEP = {"duration_min": 15, "hr": 6, "weight_kg": 20}
SEVERITY_SHIFT = {"MILD": "MODERATE", "MODERATE": "MILD", "SEVERE": "MODERATE"}


class DefectInjector:
    """Injects defects one kind at a time, in batches, never two on the same row or key."""

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
        ids = []
        for row, other_site in zip(rows.tolist(), foreign.tolist(), strict=True):
            if other_site:
                ids.append(f"{_other_prefix(self.trial.source)}-{self.trial.ids[table.subject[row]][-4:]}")
            else:
                ids.append(f"{self.trial.source}-{self.next_unknown:04d}")
                self.next_unknown -= 1
        table.subject[copies] = -1
        table.used[rows] = True  # copying the same row twice under the same foreign id would repeat a key
        return self.corrupt(dataset, "subject_id", copies, ids, "UNKNOWN_SUBJECT")

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
        return [self.dialect.decimal1(v) if column == "weight_kg" else str(v) for v in values.tolist()]

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
    for wanted_per_kind in (1, extra):
        for flag_type, methods in FLAG_METHODS.items():
            wanted = wanted_per_kind
            for i in rng.permutation(len(methods)).tolist():
                if wanted > 0:
                    wanted -= getattr(injector, methods[i])(flag_type, wanted)
    # At least one of every kind per site, so small trials exercise every path ...
    for kind in (*REASONS, DUPLICATE):
        options = [v for v in ROW_VARIANTS if v.kind == kind]
        for i in rng.permutation(len(options)).tolist():
            if injector.apply(options[i], 1):
                break
    # ... then the rest at the requested rate, relative to each dataset's rows.
    for dataset in CHILD_DATASETS:
        options = [v for v in ROW_VARIANTS if v.dataset == dataset]
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
        try:
            for i in rng.permutation(len(PARTICIPANT_VARIANTS)).tolist():
                if injector.apply(PARTICIPANT_VARIANTS[i], 1):
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
# Writing


@dataclass(frozen=True)
class WrittenFile:
    name: str
    data: bytes
    rows: int


@dataclass
class SiteExport:
    source: str
    transfer_id: str
    dialect: Dialect
    tables: dict[str, Table]
    columns: dict[str, list[str]]
    trial: SiteTrial
    injector: DefectInjector


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


def write_dts_csv(export: SiteExport) -> list[WrittenFile]:
    return [
        render_csv(export.tables[ds], export.columns[ds], export.dialect, DATASET_FILES[ds])
        for ds in DATASET_FILES
    ]


# One writer per delivery format; a later issue adds "redcap" and "dts-xlsx" here.
SITE_WRITERS: dict[str, Callable[[SiteExport], list[WrittenFile]]] = {"dts-csv": write_dts_csv}


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
) -> SiteExport:
    rng = _rng(seed, source, 0)
    dialect = Dialect.from_settings(settings)
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
    injector = DefectInjector(rng, trial, design, dialect, tables, transfer_id)
    inject_defects(injector, defect_rate, trial.n)
    mark_unknown_consequences(injector)
    columns = {ds: _column_order(rng, t, ds, profile.shuffle_columns) for ds, t in tables.items()}
    return SiteExport(source, transfer_id, dialect, tables, columns, trial, injector)


def expected_quarantine(export: SiteExport) -> list[dict[str, Any]]:
    """Every record to quarantine, located by its line in the written file (header = line 1)."""
    records = []
    for dataset, table in export.tables.items():
        order = table.final_order()
        lines = np.flatnonzero(table.reason[order] != "")
        for line, row in zip((lines + 2).tolist(), order[lines].tolist(), strict=True):
            records.append(
                {
                    "source": export.source,
                    "transfer_id": export.transfer_id,
                    "dataset": dataset,
                    "source_file": DATASET_FILES[dataset],
                    "source_row": line,
                    "column": table.reason_col[row],
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
) -> GenerationReport:
    """Write one transfer per `dts-csv` source and one IWRS list under `out`, plus the report `.generation_report.json`.

    Transfer ids are the export's UTC time: `transfer_time` (default 2026-06-01T02:00Z) plus ten minutes
    per position of the source in the registry, so the same arguments give byte-identical output.
    """
    if not 1 <= participants_per_site <= 8999:
        raise ValueError("participants_per_site must be 1..8999 (subject ids have four digits)")
    if not 0 <= defect_rate <= 1:
        raise ValueError("defect_rate must be between 0 and 1")
    registry = {s: dict(v) for s, v in (sources if sources is not None else load_registry()).items()}
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
        )
        files = writer(export)
        folder = write_transfer(out, study, source, transfer_id, fmt, files)
        report.transfers.append((source, transfer_id, folder))
        report.formats[source] = fmt
        for dataset, written in zip(DATASET_FILES, files, strict=True):
            report.delivered[(source, dataset)] = written.rows
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
