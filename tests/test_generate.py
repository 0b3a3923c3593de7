"""flows/generate.py: reproducible demo deliveries in each site's dialect, whose report says exactly
what a pipeline following the DTS must quarantine (§6), collapse and flag.

`reference_quarantine` below re-derives the quarantine from the written files with a literal, slow
reading of DTS §3 and §6, independently of the generator's bookkeeping; the report must agree with it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from flows.generate import (
    DATASET_FILES,
    DTS_COLUMNS,
    REASONS,
    REPORT_FILE,
    GenerationReport,
    generate_trial,
    load_registry,
    load_study_design,
)

REGISTRY = load_registry()
DTS_CSV = [s for s, v in REGISTRY.items() if v["format"] == "dts-csv"]
DESIGN = load_study_design()
Rows = list[dict[str, str]]


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    out = tmp_path_factory.mktemp("trial")
    return out, generate_trial(out, seed=11, participants_per_site=8)


@pytest.fixture(scope="module")
def bigger_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    """50 people per site at the three dts-csv sites: must stay quick, and is enough for arm effects."""
    out = tmp_path_factory.mktemp("bigger")
    return out, generate_trial(out, seed=3, participants_per_site=50)


def read_rows(path: Path, source: str) -> Rows:
    """A delivered file read with its site's dialect, every column as text."""
    settings = REGISTRY[source]
    with path.open(encoding=settings["encoding"], newline="") as handle:
        names = handle.readline().rstrip("\r\n").split(settings["delimiter"])
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(encoding=settings["encoding"]),
        parse_options=pacsv.ParseOptions(delimiter=settings["delimiter"]),
        convert_options=pacsv.ConvertOptions(
            column_types={n.lstrip("\ufeff"): pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pylist()


def transfer_dir(out: Path, report: GenerationReport, source: str) -> Path:
    return next(path for s, _, path in report.transfers if s == source)


def all_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# A literal reading of DTS §3 and §6, used only to check the generator's report.

CODES = {
    "sex": {"F", "M", "X"},
    "prior_ect": {"Y", "N"},
    "attended": {"Y", "N"},
    "serious": {"Y", "N"},
    "status": {"SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED", "WITHDRAWN"},
    "route": {"IV", "IM", "SL", "IN"},
    "timepoint": {"PRE", "T40", "T120"},
    "severity": {"MILD", "MODERATE", "SEVERE"},
    "related": {"NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"},
    "outcome": {"RECOVERED", "RECOVERING", "NOT_RECOVERED", "RECOVERED_WITH_SEQUELAE", "FATAL", "UNKNOWN"},
    "action": {"NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN"},
}
LIMITS = {
    "birth_year": (1900, 2010),
    "weight_kg": (30, 250),
    "duration_min": (5, 600),
    "dose_mg": (1e-9, 800),
    "infusion_min": (1, 240),
    "sbp": (50, 300),
    "dbp": (20, 200),
    "hr": (20, 250),
    "spo2": (50, 100),
}
TYPES = {
    "date": {
        "screening_date",
        "consent_date",
        "withdrawal_date",
        "session_date",
        "assessment_date",
        "onset_date",
        "end_date",
    },
    "time": {"start_time", "measured_time"},
    "int": {"birth_year", "duration_min", "infusion_min", "sbp", "dbp", "hr", "spo2", "item", "score"},
    "decimal": {"weight_kg", "dose_mg"},
}
KEYS = {
    "participants": ("subject_id",),
    "sessions": ("subject_id", "visit"),
    "vitals": ("subject_id", "visit", "timepoint"),
    "assessment_items": ("subject_id", "visit", "instrument", "item"),
    "adverse_events": ("subject_id", "ae_id"),
}


class Dialect:
    def __init__(self, source: str) -> None:
        settings = REGISTRY[source]
        self.source = source
        self.missing = set(settings["missing_values"])
        self.date_format = settings["date_format"]
        self.decimal = settings["decimal"]

    def value(self, text: str, column: str) -> Any:
        """The typed value, None when missing; raises ValueError when it cannot be read."""
        if text in self.missing:
            return None
        if column in TYPES["date"]:
            return datetime.strptime(text, self.date_format).date()
        if column in TYPES["time"]:
            if not re.fullmatch(r"\d{2}:\d{2}", text):
                raise ValueError(text)
            return datetime.strptime(text, "%H:%M").time()
        if column in TYPES["int"]:
            if not re.fullmatch(r"-?\d+", text):
                raise ValueError(text)
            return int(text)
        if column in TYPES["decimal"]:
            if not re.fullmatch(r"-?\d+(" + re.escape(self.decimal) + r"\d+)?", text):
                raise ValueError(text)
            return float(text.replace(self.decimal, "."))
        return text


def _required(dataset: str, record: dict[str, Any]) -> set[str]:
    columns = set(DTS_COLUMNS[dataset])
    if dataset == "participants":
        return columns - (
            {"withdrawal_date", "withdrawal_reason"} if record["status"] != "WITHDRAWN" else set()
        )
    if dataset == "sessions":
        dosing = DESIGN.visits.get(record["visit"] or "", None)
        optional = {"route", "dose_mg", "weight_kg", "infusion_min"}
        if dosing is not None and dosing.kind == "DOSING":
            optional = set() if record["route"] == "IV" else {"infusion_min"}
        return columns - optional
    if dataset == "assessment_items":
        return columns - ({"rater_id"} if record["instrument"] != "MADRS" else set())
    return columns - {"end_date"} if dataset == "adverse_events" else columns


def _out_of_range(dataset: str, record: dict[str, Any]) -> bool:
    for column, value in record.items():
        if value is None:
            continue
        if column in CODES and value not in CODES[column]:
            return True
        low, high = LIMITS.get(column, (None, None))
        if low is not None and not low <= value <= high:
            return True
    if dataset == "assessment_items":
        instrument = DESIGN.instruments.get(record["instrument"])
        return instrument is None or not instrument.item_min <= record["score"] <= instrument.item_max
    return False


def _first_reason(dataset: str, raw: dict[str, str], dialect: Dialect) -> tuple[str, dict[str, Any]]:
    record: dict[str, Any] = {}
    for column in DTS_COLUMNS[dataset]:
        try:
            record[column] = dialect.value(raw[column], column)
        except ValueError:
            return "UNPARSEABLE", record
    if any(record[c] is None for c in _required(dataset, record)):
        return "MISSING_REQUIRED", record
    if _out_of_range(dataset, record):
        return "OUT_OF_RANGE", record
    return "", record


def _inconsistent(dataset: str, r: dict[str, Any]) -> bool:
    if dataset == "participants":
        return r["consent_date"] > r["screening_date"]
    if dataset == "vitals":
        return r["dbp"] >= r["sbp"]
    if dataset == "adverse_events":
        return r["end_date"] is not None and r["end_date"] < r["onset_date"]
    return False


def _invalid_visit(dataset: str, r: dict[str, Any]) -> bool:
    if dataset != "assessment_items":
        return False
    instrument = DESIGN.instruments[r["instrument"]]
    return r["visit"] not in instrument.visits or not 1 <= r["item"] <= instrument.items


def _reference_dataset(
    dataset: str, rows: Rows, dialect: Dialect, known: set[str] | None, reasons: dict[int, str]
) -> tuple[dict[int, dict[str, Any]], int]:
    """Reasons of one dataset's rows (line -> code) in DTS §6 order; returns the typed rows and collapses."""
    typed: dict[int, dict[str, Any]] = {}
    for line, raw in enumerate(rows, start=2):
        reason, record = _first_reason(dataset, raw, dialect)
        if not reason and not record["subject_id"].startswith(f"{dialect.source}-"):
            reason = "UNKNOWN_SUBJECT"
        if not reason and known is not None and record["subject_id"] not in known:
            reason = "UNKNOWN_SUBJECT"
        if reason:
            reasons[line] = reason
        else:
            typed[line] = record
    by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for line, record in typed.items():
        by_key[tuple(record[k] for k in KEYS[dataset])].append(line)
    collapsed = 0
    for lines in by_key.values():
        distinct = {tuple(typed[line][c] for c in DTS_COLUMNS[dataset]) for line in lines}
        if len(distinct) > 1:
            reasons.update(dict.fromkeys(lines, "CONFLICTING_DUPLICATE"))
        else:
            collapsed += len(lines) - 1
    for line, record in typed.items():
        if line not in reasons and _invalid_visit(dataset, record):
            reasons[line] = "INVALID_VISIT"
        elif line not in reasons and _inconsistent(dataset, record):
            reasons[line] = "INCONSISTENT"
    return {line: r for line, r in typed.items() if line not in reasons}, collapsed


def reference_quarantine(folder: Path, source: str) -> tuple[Counter[tuple[str, int, str]], dict[str, int]]:
    dialect = Dialect(source)
    found: Counter[tuple[str, int, str]] = Counter()
    collapsed: dict[str, int] = {}
    known: set[str] | None = None
    for dataset, name in DATASET_FILES.items():
        reasons: dict[int, str] = {}
        landed, collapsed[dataset] = _reference_dataset(
            dataset, read_rows(folder / name, source), dialect, known, reasons
        )
        found.update((dataset, line, reason) for line, reason in reasons.items())
        if dataset == "participants":
            known = {r["subject_id"] for r in landed.values()}
    return found, collapsed


# ----------------------------------------------------------------------------------------------


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    generate_trial(first, seed=5, participants_per_site=6)
    generate_trial(second, seed=5, participants_per_site=6)
    assert all_files(first) == all_files(second)


def test_another_seed_writes_other_data(tmp_path: Path) -> None:
    generate_trial(tmp_path / "a", seed=5, participants_per_site=6)
    generate_trial(tmp_path / "b", seed=6, participants_per_site=6)
    assert all_files(tmp_path / "a") != all_files(tmp_path / "b")


def test_manifests_match_the_files_they_list(trial: tuple[Path, GenerationReport]) -> None:
    _, report = trial
    for source, transfer_id, folder in report.transfers:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert set(manifest) == {"study", "source", "transfer_id", "format", "files"}
        assert (manifest["study"], manifest["source"], manifest["transfer_id"]) == (
            "KAP-TRD-01",
            source,
            transfer_id,
        )
        assert manifest["format"] == REGISTRY[source]["format"]
        assert folder.name == transfer_id and re.fullmatch(r"\d{8}T\d{6}Z", transfer_id)
        listed = {f["name"] for f in manifest["files"]}
        assert listed == {p.name for p in folder.iterdir()} - {"manifest.json"}
        for entry in manifest["files"]:
            data = (folder / entry["name"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(data).hexdigest()
            assert entry["rows"] == len(read_rows(folder / entry["name"], source))


def test_transfer_ids_are_the_default_export_time_plus_ten_minutes_per_registry_position(
    trial: tuple[Path, GenerationReport],
) -> None:
    _, report = trial
    ids = {source: transfer_id for source, transfer_id, _ in report.transfers}
    assert ids["S01"] == "20260601T020000Z"
    assert ids["S02"] == "20260601T021000Z"
    assert ids["IWRS"] == "20260601T030000Z"


@pytest.mark.parametrize("source", DTS_CSV)
def test_each_file_parses_in_its_site_dialect_with_the_dts_columns(
    trial: tuple[Path, GenerationReport], source: str
) -> None:
    out, report = trial
    folder = transfer_dir(out, report, source)
    for dataset, name in DATASET_FILES.items():
        raw = (folder / name).read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") == (REGISTRY[source]["encoding"] == "utf-8-sig")
        raw.decode(REGISTRY[source]["encoding"])
        rows = read_rows(folder / name, source)
        header = list(rows[0]) if rows else []
        assert set(DTS_COLUMNS[dataset]) <= set(header)
        assert all(name == name.lower() for name in header)
        assert len(header) == len(set(header))
        assert report.delivered[(source, dataset)] == len(rows)


def test_site_dialects_show_in_the_files(trial: tuple[Path, GenerationReport]) -> None:
    out, report = trial
    zurich = read_rows(transfer_dir(out, report, "S02") / "participants.csv", "S02")
    assert all(re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", r["screening_date"]) for r in zurich[:3])
    assert any(re.fullmatch(r"\d+,\d", r["weight_kg"]) for r in zurich)
    assert b"\r\n" in (transfer_dir(out, report, "S02") / "sessions.csv").read_bytes()
    london = read_rows(transfer_dir(out, report, "S05") / "sessions.csv", "S05")
    assert any(r["route"] == "." for r in london)


def test_every_dts_reason_code_is_expected_in_quarantine(trial: tuple[Path, GenerationReport]) -> None:
    _, report = trial
    for source in DTS_CSV:
        codes = {q["reason_code"] for q in report.expected_quarantine if q["source"] == source}
        assert codes == set(REASONS), source


@pytest.mark.parametrize("source", DTS_CSV)
def test_expected_quarantine_agrees_with_a_literal_reading_of_the_dts(
    trial: tuple[Path, GenerationReport], source: str
) -> None:
    out, report = trial
    found, collapsed = reference_quarantine(transfer_dir(out, report, source), source)
    expected = Counter(
        (q["dataset"], q["source_row"], q["reason_code"])
        for q in report.expected_quarantine
        if q["source"] == source
    )
    assert expected == found
    assert {ds: report.expected_collapsed[(source, ds)] for ds in DATASET_FILES} == collapsed
    assert sum(collapsed.values()) >= 1


def test_expected_quarantine_names_the_column_holding_the_fault(trial: tuple[Path, GenerationReport]) -> None:
    out, report = trial
    for q in report.expected_quarantine:
        folder = transfer_dir(out, report, q["source"])
        row = read_rows(folder / q["source_file"], q["source"])[q["source_row"] - 2]
        assert q["column"] in row
        if q["reason_code"] == "MISSING_REQUIRED":
            assert row[q["column"]] in REGISTRY[q["source"]]["missing_values"]


def test_iwrs_lists_the_randomized_participants_of_generated_sites(
    trial: tuple[Path, GenerationReport],
) -> None:
    out, report = trial
    randomization = read_rows(transfer_dir(out, report, "IWRS") / "randomization.csv", "IWRS")
    randomized: dict[str, str] = {}
    for source in DTS_CSV:
        for row in read_rows(transfer_dir(out, report, source) / "participants.csv", source):
            if row["status"] in {"ENROLLED", "COMPLETED", "WITHDRAWN"}:
                randomized[row["subject_id"]] = "ECT" if row["prior_ect"] == "Y" else "NO_ECT"
    assert {r["subject_id"]: r["stratum"] for r in randomization} == randomized
    assert {r["arm"] for r in randomization} == {"KAP", "KET", "ACP"}
    assert {r["site_id"] for r in randomization} <= set(DTS_CSV)
    assert all(r["subject_id"].startswith(r["site_id"] + "-") for r in randomization)
    assert all(date.fromisoformat(r["randomized_on"]) for r in randomization)


def test_sources_of_formats_without_a_writer_are_skipped_and_reported(
    trial: tuple[Path, GenerationReport],
) -> None:
    out, report = trial
    assert set(report.skipped) == {s for s, v in REGISTRY.items() if v["format"] in ("redcap", "dts-xlsx")}
    assert all(not (out / source).exists() for source in report.skipped)


def test_report_json_sits_beside_the_sources_and_matches_the_report(
    trial: tuple[Path, GenerationReport],
) -> None:
    out, report = trial
    saved = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert saved["expected_quarantine"] == report.expected_quarantine
    assert saved["delivered"]["S01"]["participants"] == report.delivered[("S01", "participants")]
    assert saved["phi_values"] == report.phi_values
    assert {t["source"] for t in saved["transfers"]} == {s for s, _, _ in report.transfers}
    assert sum(saved["reason_counts"].values()) == len(report.expected_quarantine)


def test_personal_data_is_written_where_the_report_says(trial: tuple[Path, GenerationReport]) -> None:
    out, report = trial
    assert report.phi_columns and report.phi_values
    written: set[str] = set()
    for source, columns in report.phi_columns.items():
        rows = read_rows(transfer_dir(out, report, source) / "participants.csv", source)
        assert set(columns) <= set(rows[0])
        written |= {r[c] for r in rows for c in columns}
    assert written == set(report.phi_values)


FLAGS_OF_VALUES = {
    "AGE_DEVIATION",
    "DOSE_DEVIATION",
    "SAFETY_VITALS",
    "SAFETY_SUICIDALITY",
    "SAFETY_SAE",
    "UNCODED_TERM",
}
DOSE_RANGES = {"IV": (0.5, 1.0), "IM": (0.5, 1.5), "SL": (100, 400), "IN": (28, 84)}
SUICIDALITY = {("CSSRS", 4): 1, ("CSSRS", 5): 1, ("CSSRS", 6): 1, ("PHQ9", 9): 1, ("MADRS", 10): 4}


def flags_of_landed_values(
    folder: Path, source: str, quarantined: set[tuple[str, int]]
) -> set[tuple[str, str, Any]]:
    """(flag type, subject, visit) of every landed value breaking a protocol or safety rule (DTS §3, §6)."""
    dialect = Dialect(source)
    flags: set[tuple[str, str, Any]] = set()

    def landed(dataset: str) -> list[dict[str, Any]]:
        rows = read_rows(folder / DATASET_FILES[dataset], source)
        return [
            {c: dialect.value(r[c], c) for c in DTS_COLUMNS[dataset]}
            for line, r in enumerate(rows, start=2)
            if (dataset, line) not in quarantined
        ]

    for r in landed("participants"):
        if not 18 <= r["consent_date"].year - r["birth_year"] <= 75:
            flags.add(("AGE_DEVIATION", r["subject_id"], None))
    for r in landed("sessions"):
        if r["route"] is not None:
            low, high = DOSE_RANGES[r["route"]]
            amount = r["dose_mg"] / r["weight_kg"] if r["route"] in ("IV", "IM") else r["dose_mg"]
            slow = r["route"] == "IV" and not 35 <= r["infusion_min"] <= 45
            if slow or not low <= amount <= high:
                flags.add(("DOSE_DEVIATION", r["subject_id"], r["visit"]))
    for r in landed("vitals"):
        if r["sbp"] >= 180 or r["dbp"] >= 110 or r["hr"] >= 130 or r["spo2"] < 92:
            flags.add(("SAFETY_VITALS", r["subject_id"], r["visit"]))
    for r in landed("assessment_items"):
        if r["score"] >= SUICIDALITY.get((r["instrument"], r["item"]), 99):
            flags.add(("SAFETY_SUICIDALITY", r["subject_id"], r["visit"]))
    coded = {term.strip().casefold() for term, _ in DESIGN.ae_terms}
    for r in landed("adverse_events"):
        if r["serious"] == "Y":
            flags.add(("SAFETY_SAE", r["subject_id"], None))
        if r["term"].strip().casefold() not in coded:
            flags.add(("UNCODED_TERM", r["subject_id"], None))
    return flags


@pytest.mark.parametrize("source", DTS_CSV)
def test_flag_worthy_values_are_exactly_the_injected_ones(
    trial: tuple[Path, GenerationReport], source: str
) -> None:
    out, report = trial
    quarantined = {
        (q["dataset"], q["source_row"]) for q in report.expected_quarantine if q["source"] == source
    }
    injected = {
        (f["flag_type"], f["subject_id"], f["visit"])
        for f in report.injected_flags
        if f["source"] == source and f["flag_type"] in FLAGS_OF_VALUES
    }
    assert {flag for flag, _, _ in injected} == FLAGS_OF_VALUES
    assert flags_of_landed_values(transfer_dir(out, report, source), source, quarantined) == injected


def test_incomplete_assessments_are_injected_by_leaving_out_an_item(
    trial: tuple[Path, GenerationReport],
) -> None:
    out, report = trial
    for flag in (f for f in report.injected_flags if f["flag_type"] == "INCOMPLETE_ASSESSMENT"):
        rows = read_rows(transfer_dir(out, report, flag["source"]) / "assessments.csv", flag["source"])
        items: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            if (r["subject_id"], r["visit"]) == (flag["subject_id"], flag["visit"]):
                items[r["instrument"]].add(r["item"])
        assert any(
            not {str(i + 1) for i in range(DESIGN.instruments[code].items)} <= present
            for code, present in items.items()
        )


@pytest.mark.parametrize("source", DTS_CSV)
def test_visits_fall_in_their_windows_unless_a_window_deviation_was_injected(
    trial: tuple[Path, GenerationReport], source: str
) -> None:
    out, report = trial
    folder = transfer_dir(out, report, source)
    dialect = Dialect(source)
    skip = {(q["dataset"], q["source_row"]) for q in report.expected_quarantine if q["source"] == source}

    def landed(dataset: str) -> Rows:
        rows = read_rows(folder / DATASET_FILES[dataset], source)
        return [r for line, r in enumerate(rows, start=2) if (dataset, line) not in skip]

    bl = {
        r["subject_id"]: dialect.value(r["assessment_date"], "assessment_date")
        for r in landed("assessment_items")
        if r["visit"] == "BL"
    }
    sessions = {
        (r["subject_id"], r["visit"]): dialect.value(r["session_date"], "session_date")
        for r in landed("sessions")
    }
    assessments = {
        (r["subject_id"], r["visit"]): dialect.value(r["assessment_date"], "assessment_date")
        for r in landed("assessment_items")
    }
    outside = set()
    for (subject, visit), when in [*sessions.items(), *assessments.items()]:
        rule = DESIGN.visits[visit]
        # INTn and D1P24 count from the actual date of the dosing session they follow (DTS §3.1).
        anchor = bl.get(subject) if rule.anchor == "BL" else sessions.get((subject, rule.anchor))
        if anchor is not None and not rule.window_min <= (when - anchor).days <= rule.window_max:
            outside.add((subject, visit))
    flagged = {
        (f["subject_id"], f["visit"])
        for f in report.injected_flags
        if f["source"] == source and f["flag_type"] == "WINDOW_DEVIATION"
    }
    assert outside == flagged


def test_fifty_per_site_shows_the_arms_apart(bigger_trial: tuple[Path, GenerationReport]) -> None:
    """Ketamine lowers MADRS within 24 h (KAP most, active placebo least) and raises dissociation and BP."""
    out, report = bigger_trial
    arms = {
        r["subject_id"]: r["arm"]
        for r in read_rows(transfer_dir(out, report, "IWRS") / "randomization.csv", "IWRS")
    }
    totals: dict[tuple[str, str, str], int] = defaultdict(int)
    rise: dict[str, list[int]] = defaultdict(list)
    for source in DTS_CSV:
        folder = transfer_dir(out, report, source)
        for r in read_rows(folder / "assessments.csv", source):
            if r["subject_id"] in arms and r["score"].isdigit() and r["instrument"] in ("MADRS", "CADSS"):
                totals[(r["subject_id"], r["instrument"], r["visit"])] += int(r["score"])
        pre: dict[tuple[str, str], int] = {}
        for r in read_rows(folder / "vitals.csv", source):
            if r["subject_id"] in arms and r["sbp"].isdigit():
                if r["timepoint"] == "PRE":
                    pre[(r["subject_id"], r["visit"])] = int(r["sbp"])
                elif r["timepoint"] == "T40" and (r["subject_id"], r["visit"]) in pre:
                    rise[arms[r["subject_id"]]].append(int(r["sbp"]) - pre[(r["subject_id"], r["visit"])])
    drop: dict[str, list[int]] = defaultdict(list)
    dissociation: dict[str, list[int]] = defaultdict(list)
    for (subject, instrument, visit), total in totals.items():
        if instrument == "MADRS" and visit == "D1P24" and (subject, "MADRS", "BL") in totals:
            drop[arms[subject]].append(totals[(subject, "MADRS", "BL")] - total)
        if instrument == "CADSS":
            dissociation[arms[subject]].append(total)

    def mean(values: list[int]) -> float:
        return sum(values) / len(values)

    assert mean(drop["KAP"]) > mean(drop["KET"]) > mean(drop["ACP"])
    assert min(mean(dissociation["KAP"]), mean(dissociation["KET"])) > 2 * mean(dissociation["ACP"])
    assert min(mean(rise["KAP"]), mean(rise["KET"])) > mean(rise["ACP"]) + 5
    baseline = [t for (s, i, v), t in totals.items() if i == "MADRS" and v == "BL"]
    assert 27 <= mean(baseline) <= 40
