"""flows/generate.py: reproducible demo deliveries in each site's dialect and format (dts-csv, dts-xlsx,
redcap), whose report says exactly what a pipeline following the DTS must quarantine (§6), collapse and flag.

`reference` below re-derives the quarantine from the written files with a literal, slow reading of DTS §3,
§4 and §6 (CSV files, workbook sheets, a REDCap raw export fanned out into conformed records through its
data dictionary), independently of the generator's bookkeeping; the report must agree with it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import re
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import openpyxl
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
FORMAT = {s: v["format"] for s, v in REGISTRY.items()}
SITES = [s for s, f in FORMAT.items() if f != "iwrs"]
DTS_CSV = [s for s in SITES if FORMAT[s] == "dts-csv"]
REDCAP = [s for s in SITES if FORMAT[s] == "redcap"]
XLSX = [s for s in SITES if FORMAT[s] == "dts-xlsx"]
DESIGN = load_study_design()
LB_TO_KG = 0.45359237
Rows = list[dict[str, str]]
Records = dict[str, list[tuple[int, dict[str, str]]]]  # dataset -> (line, text by DTS column; "_" keys: context)


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    out = tmp_path_factory.mktemp("trial")
    return out, generate_trial(out, seed=11, participants_per_site=8)


@pytest.fixture(scope="module")
def bigger_trial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationReport]:
    """50 people per site at the three dts-csv sites: must stay quick, and is enough for arm effects."""
    out = tmp_path_factory.mktemp("bigger")
    sources = {s: REGISTRY[s] for s in [*DTS_CSV, "IWRS"]}
    return out, generate_trial(out, seed=3, participants_per_site=50, sources=sources)


def read_rows(path: Path, source: str) -> Rows:
    """A delivered file read with its site's dialect, every column as text."""
    settings = REGISTRY[source]
    encoding, delimiter = settings["encoding"] or "utf-8", settings["delimiter"] or ","
    with path.open(encoding=encoding, newline="") as handle:
        names = handle.readline().rstrip("\r\n").split(delimiter)
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(encoding=encoding),
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(
            column_types={n.lstrip("\ufeff"): pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table.to_pylist()


def cell_text(value: Any, date_format: str) -> str:
    """A workbook cell as the text a site means by it: a date cell in the site's date format."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime(date_format)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def read_sheets(path: Path, source: str, raw: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every sheet as records by header (row 1), cells as text (or as openpyxl gives them with `raw`)."""
    key = (path, source, raw)
    if key not in _SHEETS:
        _SHEETS[key] = _read_sheets(path, source, raw)
    return copy.deepcopy(_SHEETS[key])


_SHEETS: dict[tuple[Path, str, bool], dict[str, list[dict[str, Any]]]] = {}


def _read_sheets(path: Path, source: str, raw: bool) -> dict[str, list[dict[str, Any]]]:
    workbook = openpyxl.load_workbook(path, read_only=True)
    sheets = {}
    for ws in workbook.worksheets:
        rows = list(ws.iter_rows(values_only=True))
        header = [str(h) for h in rows[0]]
        padded = [(*row, *[None] * (len(header) - len(row))) for row in rows[1:]]
        text = (lambda v: v) if raw else (lambda v: cell_text(v, REGISTRY[source]["date_format"]))
        sheets[ws.title] = [{h: text(v) for h, v in zip(header, row, strict=True)} for row in padded]
    workbook.close()
    return sheets


def transfer_dir(out: Path, report: GenerationReport, source: str) -> Path:
    return next(path for s, _, path in report.transfers if s == source)


def manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def all_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------
# A literal reading of DTS §4: the REDCap raw export fanned out into conformed records.

# The project's events in its order (as the example deliveries list them): each dose, then what follows it.
REDCAP_EVENTS: dict[str, str | None] = {
    "screening_arm_1": "SCR",
    "baseline_arm_1": "BL",
    "prep_1_arm_1": "PREP1",
    "prep_2_arm_1": "PREP2",
    "dose_1_arm_1": "D1",
    "post_dose_1_24h_arm_1": "D1P24",
    "integration_1_arm_1": "INT1",
    **{k: v for n in range(2, 7) for k, v in ((f"dose_{n}_arm_1", f"D{n}"), (f"integration_{n}_arm_1", f"INT{n}"))},
    **{f"week_{n}_arm_1": f"W{n}" for n in (1, 2, 3, 4, 8, 12)},
    "ae_log_arm_1": None,
}
REDCAP_FORMS: dict[str, tuple[str, dict[str, str]]] = {  # form -> (dataset, field -> DTS column)
    "enrollment": (
        "participants",
        {"scr_date": "screening_date", "consent_date": "consent_date", "birth_year": "birth_year", "sex": "sex",
         "weight_kg": "weight_kg", "prior_ect": "prior_ect"},
    ),
    "study_status": (
        "participants",
        {"status": "status", "withdrawal_date": "withdrawal_date", "withdrawal_reason": "withdrawal_reason"},
    ),
    "dosing": (
        "sessions",
        {"dose_date": "session_date", "dose_time": "start_time", "dose_route": "route", "dose_mg": "dose_mg",
         "dose_weight_kg": "weight_kg", "dose_infusion_min": "infusion_min", "dose_duration_min": "duration_min",
         "dose_therapist": "therapist_id", "dose_attended": "attended"},
    ),
    "therapy_session": (
        "sessions",
        {"ts_date": "session_date", "ts_time": "start_time", "ts_duration_min": "duration_min",
         "ts_therapist": "therapist_id", "ts_attended": "attended"},
    ),
    "vital_signs": (
        "vitals",
        {"vs_timepoint": "timepoint", "vs_time": "measured_time", "vs_sbp": "sbp", "vs_dbp": "dbp", "vs_hr": "hr",
         "vs_spo2": "spo2"},
    ),
    "adverse_events": (
        "adverse_events",
        {"ae_id": "ae_id", "ae_term": "term", "ae_onset": "onset_date", "ae_end": "end_date",
         "ae_severity": "severity", "ae_serious": "serious", "ae_related": "related", "ae_outcome": "outcome"},
    ),
}
REDCAP_INSTRUMENTS = {"madrs": "MADRS", "phq9": "PHQ9", "gad7": "GAD7", "cadss": "CADSS", "cssrs": "CSSRS"}
AE_ACTIONS = ("NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN")  # ae_action___1..4, most severe last


def read_dictionary(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, list[str]]]:
    """Choice codes per field (raw code -> DTS code; yesno 1 Y, 0 N) and the fields of each form."""
    choices: dict[str, dict[str, str]] = {}
    forms: dict[str, list[str]] = defaultdict(list)
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            name, kind = row["Variable / Field Name"], row["Field Type"]
            forms[row["Form Name"]].append(name)
            if kind == "yesno":
                choices[name] = {"1": "Y", "0": "N"}
            elif kind in ("radio", "dropdown", "checkbox"):
                pairs = (c.split(",", 1) for c in row["Choices, Calculations, OR Slider Labels"].split("|"))
                choices[name] = {code.strip(): label.strip() for code, label in pairs}
    return choices, dict(forms)


@dataclass
class RedcapForm:
    """One form on one export row: what the TOTAL_MISMATCH and FORM_INCOMPLETE rules read."""

    line: int
    form: str
    subject: str
    visit: str | None
    status: str
    total: str
    items: dict[int, str]


def read_redcap(folder: Path) -> tuple[Records, list[RedcapForm]]:
    choices, forms = read_dictionary(folder / "data_dictionary.csv")
    records: Records = defaultdict(list)
    seen: list[RedcapForm] = []
    with (folder / "redcap_export.csv").open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        columns = {
            form: [c for c in header if c.split("___")[0] in fields and c != "record_id"] + [f"{form}_complete"]
            for form, fields in forms.items()
        }
        for line, row in enumerate(reader, start=2):

            def value(name: str, row: dict[str, str] = row) -> str:
                text = row.get(name, "")
                return choices.get(name, {}).get(text, text) if text else text

            subject, visit = row["record_id"], REDCAP_EVENTS[row["redcap_event_name"]]
            present = {form for form, cols in columns.items() if any(row[c] for c in cols)}
            participant: dict[str, str] = {}
            for form in forms:
                if form not in present:
                    continue
                status = row[f"{form}_complete"]
                if form in REDCAP_INSTRUMENTS:
                    items = {
                        int(name.rsplit("_", 1)[1]): row[name]
                        for name in forms[form]
                        if re.fullmatch(rf"{form}_\d+", name)
                    }
                    seen.append(RedcapForm(line, form, subject, visit, status, row.get(f"{form}_total", ""), items))
                    for item, score in items.items():
                        if score != "":  # an empty item is a missing item, not a record (DTS §4)
                            # A score is its raw code: 0..max, or 0/1 for the yes/no items of the C-SSRS.
                            records["assessment_items"].append((line, {
                                "subject_id": subject, "visit": visit or "", "instrument": REDCAP_INSTRUMENTS[form],
                                "assessment_date": row[f"{form}_date"], "rater_id": row.get(f"{form}_rater", ""),
                                "item": str(item), "score": score, "_status": status,
                            }))
                    continue
                dataset, fields = REDCAP_FORMS[form]
                raw = {column: value(name) for name, column in fields.items()}
                raw["_status"] = status
                seen.append(RedcapForm(line, form, subject, visit, status, "", {}))
                if dataset == "participants":
                    participant.update(raw)
                    continue
                raw["subject_id"] = subject
                if dataset in ("sessions", "vitals"):
                    raw["visit"] = visit or ""
                if dataset == "sessions":
                    raw = {**dict.fromkeys(DTS_COLUMNS["sessions"], ""), **raw}
                if dataset == "adverse_events":
                    ticked = [i for i in range(1, 5) if row[f"ae_action___{i}"] == "1"]
                    raw["action"] = AE_ACTIONS[max(ticked) - 1] if ticked else ""
                records[dataset].append((line, raw))
            if participant:
                full = {**dict.fromkeys(DTS_COLUMNS["participants"], ""), **participant, "subject_id": subject}
                records["participants"].append((line, full))
    return records, seen


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
    """How a delivery writes values: REDCap's raw export is ISO, `.` and empty; a workbook holds numbers
    as numbers (read back with `.`); a CSV file follows the registry."""

    def __init__(self, source: str, fmt: str) -> None:
        settings = REGISTRY[source]
        self.source = source
        redcap = fmt == "redcap"
        self.missing = {""} if redcap else set(settings["missing_values"])
        self.date_format = "%Y-%m-%d" if redcap else settings["date_format"]
        self.decimal = "." if fmt != "dts-csv" else settings["decimal"]

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
    if raw.get("_unit") == "lb" and record["weight_kg"] is not None:
        record["weight_kg"] *= LB_TO_KG  # weight_lb is allowed instead (DTS §3)
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
    dataset: str, records: list[tuple[int, dict[str, str]]], dialect: Dialect, known: set[str] | None
) -> tuple[dict[int, str], dict[int, dict[str, Any]], int]:
    """Reasons of one dataset's records (index -> code) in DTS §6 order, the landed typed records and the
    identical duplicates collapsed."""
    typed: dict[int, dict[str, Any]] = {}
    reasons: dict[int, str] = {}
    for index, (_, raw) in enumerate(records):
        reason, record = _first_reason(dataset, raw, dialect)
        if not reason and not record["subject_id"].startswith(f"{dialect.source}-"):
            reason = "UNKNOWN_SUBJECT"
        if not reason and known is not None and record["subject_id"] not in known:
            reason = "UNKNOWN_SUBJECT"
        if reason:
            reasons[index] = reason
        else:
            typed[index] = record
    by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for index, record in typed.items():
        by_key[tuple(record[k] for k in KEYS[dataset])].append(index)
    collapsed, landed = 0, {}
    for indexes in by_key.values():
        distinct = {tuple(typed[i][c] for c in DTS_COLUMNS[dataset]) for i in indexes}
        if len(distinct) > 1:
            reasons.update(dict.fromkeys(indexes, "CONFLICTING_DUPLICATE"))
        else:
            collapsed += len(indexes) - 1
            landed[indexes[0]] = typed[indexes[0]]
    for index, record in typed.items():
        if index not in reasons and _invalid_visit(dataset, record):
            reasons[index] = "INVALID_VISIT"
        elif index not in reasons and _inconsistent(dataset, record):
            reasons[index] = "INCONSISTENT"
    return reasons, {i: r for i, r in landed.items() if i not in reasons}, collapsed


@dataclass
class Reference:
    """What a literal reading of the delivered files says about one transfer."""

    fmt: str
    dialect: Dialect
    records: Records
    files: dict[str, str]  # dataset -> source file as the report names it
    found: Counter[tuple[str, str, int, str]] = field(default_factory=Counter)
    collapsed: dict[str, int] = field(default_factory=dict)
    landed: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(default_factory=dict)
    forms: list[RedcapForm] = field(default_factory=list)


def read_delivery(folder: Path, source: str) -> Reference:
    fmt = manifest(folder)["format"]
    dialect = Dialect(source, fmt)
    if fmt == "redcap":
        records, forms = read_redcap(folder)
        return Reference(fmt, dialect, records, dict.fromkeys(DATASET_FILES, "redcap_export.csv"), forms=forms)
    if fmt == "dts-xlsx":
        sheets = read_sheets(folder / "export.xlsx", source)
        records, files = {}, {}
        for dataset, name in DATASET_FILES.items():
            sheet = name.removesuffix(".csv")
            rows = []
            for row in sheets[sheet]:
                if "weight_lb" in row:
                    row = {**row, "weight_kg": row["weight_lb"], "_unit": "lb"}
                rows.append(row)
            records[dataset], files[dataset] = list(enumerate(rows, start=2)), f"export.xlsx!{sheet}"
        return Reference(fmt, dialect, records, files)
    records = {ds: list(enumerate(read_rows(folder / name, source), start=2)) for ds, name in DATASET_FILES.items()}
    return Reference(fmt, dialect, records, dict(DATASET_FILES))


def reference(folder: Path, source: str) -> Reference:
    ref = read_delivery(folder, source)
    known: set[str] | None = None
    for dataset in DATASET_FILES:
        records = ref.records.get(dataset, [])
        reasons, landed, ref.collapsed[dataset] = _reference_dataset(dataset, records, ref.dialect, known)
        ref.found.update((dataset, ref.files[dataset], records[i][0], r) for i, r in reasons.items())
        ref.landed[dataset] = [(records[i][0], typed, records[i][1]) for i, typed in sorted(landed.items())]
        if dataset == "participants":
            known = {r["subject_id"] for _, r, _ in ref.landed[dataset]}
    return ref


@pytest.fixture(scope="module")
def references(trial: tuple[Path, GenerationReport]) -> dict[str, Reference]:
    out, report = trial
    return {source: reference(transfer_dir(out, report, source), source) for source in SITES}


# ----------------------------------------------------------------------------------------------


def test_same_seed_writes_identical_bytes_and_another_seed_other_data(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_trial(first, seed=5, participants_per_site=4)
    generate_trial(second, seed=5, participants_per_site=4)
    generate_trial(other, seed=6, participants_per_site=4)
    written = all_files(first)
    assert {p.split("/")[0] for p in written} == {*SITES, "IWRS", REPORT_FILE}
    assert written == all_files(second)
    changed = {p for p, data in all_files(other).items() if written.get(p) != data}
    assert {p.split("/")[0] for p in changed} == {*SITES, "IWRS", REPORT_FILE}


def test_every_registered_format_is_written_and_others_are_skipped(
    trial: tuple[Path, GenerationReport], tmp_path: Path
) -> None:
    _, report = trial
    assert report.skipped == {}
    assert report.formats == FORMAT
    odd = {"S01": REGISTRY["S01"], "S09": {**REGISTRY["S01"], "format": "odm-xml"}}
    other = generate_trial(tmp_path, seed=1, participants_per_site=3, sources=odd)
    assert set(other.skipped) == {"S09"} and not (tmp_path / "S09").exists()


def test_manifests_match_the_files_they_list(trial: tuple[Path, GenerationReport]) -> None:
    _, report = trial
    required = {"dts-csv": set(DATASET_FILES.values()), "dts-xlsx": {"export.xlsx"},
                "redcap": {"redcap_export.csv", "data_dictionary.csv"}, "iwrs": {"randomization.csv"}}
    for source, transfer_id, folder in report.transfers:
        listing = manifest(folder)
        assert set(listing) == {"study", "source", "transfer_id", "format", "files"}
        assert (listing["study"], listing["source"], listing["transfer_id"]) == ("KAP-TRD-01", source, transfer_id)
        assert listing["format"] == FORMAT[source]
        assert folder.name == transfer_id and re.fullmatch(r"\d{8}T\d{6}Z", transfer_id)
        listed = {f["name"] for f in listing["files"]}
        assert listed == {p.name for p in folder.iterdir()} - {"manifest.json"} == required[FORMAT[source]]
        for entry in listing["files"]:
            path = folder / entry["name"]
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            if entry["name"].endswith(".xlsx"):  # rows: sheet -> data rows (DTS §2.1)
                sheets = read_sheets(path, source, raw=True)
                assert entry["rows"] == {sheet: len(rows) for sheet, rows in sheets.items()}
                assert list(entry["rows"]) == [n.removesuffix(".csv") for n in DATASET_FILES.values()]
            else:
                assert entry["rows"] == len(read_rows(path, source))


def test_transfer_ids_are_the_default_export_time_plus_ten_minutes_per_registry_position(
    trial: tuple[Path, GenerationReport],
) -> None:
    _, report = trial
    ids = {source: transfer_id for source, transfer_id, _ in report.transfers}
    assert ids["S01"] == "20260601T020000Z"
    assert ids["S02"] == "20260601T021000Z"
    assert ids["S06"] == "20260601T025000Z"
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


@pytest.mark.parametrize("source", XLSX)
def test_a_workbook_has_the_five_sheets_as_a_site_fills_them(
    trial: tuple[Path, GenerationReport], source: str
) -> None:
    """Header in row 1, weights in pounds, dates as date cells and as text `MM/DD/YYYY`, -99 as a number."""
    out, report = trial
    sheets = read_sheets(transfer_dir(out, report, source) / "export.xlsx", source, raw=True)
    assert list(sheets) == ["participants", "sessions", "vitals", "assessments", "adverse_events"]
    kinds: Counter[str] = Counter()
    for dataset, name in DATASET_FILES.items():
        rows = sheets[name.removesuffix(".csv")]
        header = set(rows[0])
        expected = {"weight_lb" if c == "weight_kg" else c for c in DTS_COLUMNS[dataset]}
        assert expected <= header and "weight_kg" not in header
        assert report.delivered[(source, dataset)] == len(rows)
        for row in rows:
            for column, value in row.items():
                if column in TYPES["date"] and value is not None:
                    is_text_date = isinstance(value, str) and re.fullmatch(r"\d{2}/\d{2}/\d{4}", value)
                    kinds["cell" if isinstance(value, datetime) else "text" if is_text_date else "other"] += 1
                kinds["-99"] += value == -99
                kinds["int"] += column in TYPES["int"] and isinstance(value, int)
    assert kinds["cell"] > kinds["text"] > 0 and kinds["-99"] > 0 and kinds["int"] > 0


@pytest.mark.parametrize("source", XLSX)
def test_a_workbook_holds_no_wall_clock_time(trial: tuple[Path, GenerationReport], source: str) -> None:
    out, report = trial
    transfer_id = next(t for s, t, _ in report.transfers if s == source)
    moment = datetime.strptime(transfer_id, "%Y%m%dT%H%M%SZ")
    with zipfile.ZipFile(transfer_dir(out, report, source) / "export.xlsx") as archive:
        assert {info.date_time for info in archive.infolist()} == {moment.timetuple()[:6]}
        core = archive.read("docProps/core.xml").decode()
    stamps = re.findall(r"<dcterms:(?:created|modified)[^>]*>([^<]+)<", core)
    assert stamps == [moment.strftime("%Y-%m-%dT%H:%M:%SZ")] * 2


@pytest.mark.parametrize("source", REDCAP)
def test_a_redcap_export_follows_the_project_template(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference], source: str
) -> None:
    """Raw codes, one row per record x event and repeating instance in REDCap's order, the DAG, statuses."""
    out, report = trial
    folder = transfer_dir(out, report, source)
    with (folder / "redcap_export.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert header[:5] == ["record_id", "redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance",
                          "redcap_data_access_group"]
    assert [f"ae_action___{i}" for i in range(1, 5)] == [c for c in header if c.startswith("ae_action")]
    assert {r["redcap_data_access_group"] for r in rows} == {source.lower()}
    assert {r["redcap_event_name"] for r in rows} <= set(REDCAP_EVENTS)
    order = [list(REDCAP_EVENTS).index(r["redcap_event_name"]) for r in rows]
    keys = [(r["record_id"], e, r["redcap_repeat_instrument"], int(r["redcap_repeat_instance"] or 0))
            for r, e in zip(rows, order, strict=True)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for r in rows:
        if r["redcap_repeat_instrument"]:
            assert r["redcap_event_name"] == ("ae_log_arm_1" if r["redcap_repeat_instrument"] == "adverse_events"
                                              else r["redcap_event_name"])
            assert {r[f"ae_action___{i}"] for i in range(1, 5)} <= ({"0", "1"} if r["ae_id"] else {""})
    statuses = Counter(f.status for f in references[source].forms)
    assert set(statuses) == {"0", "1", "2"} and statuses["2"] > statuses["1"] > 0
    assert report.delivered == {**report.delivered, **{(source, ds): len(references[source].records[ds])
                                                       for ds in DATASET_FILES}}


@pytest.mark.parametrize("source", REDCAP)
def test_the_data_dictionary_is_the_trials_redcap_template(
    trial: tuple[Path, GenerationReport], examples: Path, source: str
) -> None:
    """Same shape as the example deliveries' dictionary and export header; added personal-data fields sit
    in the enrollment form, marked as identifiers."""
    out, report = trial
    folder = transfer_dir(out, report, source)
    example = next((examples / "phase1" / "inbox" / "S03").iterdir())
    personal = report.phi_columns.get(source, [])
    with (folder / "data_dictionary.csv").open(encoding="utf-8", newline="") as handle:
        written = list(csv.reader(handle))
    template = [row for row in written if row[0] not in personal]
    assert template == list(csv.reader((example / "data_dictionary.csv").open(encoding="utf-8", newline="")))
    assert [(row[1], row[10]) for row in written if row[0] in personal] == [("enrollment", "y")] * len(personal)
    header = (folder / "redcap_export.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    example_header = (example / "redcap_export.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert [c for c in header if c not in personal] == example_header


def test_every_dts_reason_code_is_expected_in_quarantine(trial: tuple[Path, GenerationReport]) -> None:
    _, report = trial
    for source in SITES:
        codes = {q["reason_code"] for q in report.expected_quarantine if q["source"] == source}
        assert codes == set(REASONS), source


@pytest.mark.parametrize("source", SITES)
def test_expected_quarantine_agrees_with_a_literal_reading_of_the_dts(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference], source: str
) -> None:
    _, report = trial
    ref = references[source]
    expected = Counter(
        (q["dataset"], q["source_file"], q["source_row"], q["reason_code"])
        for q in report.expected_quarantine
        if q["source"] == source
    )
    assert expected == ref.found
    assert {ds: report.expected_collapsed[(source, ds)] for ds in DATASET_FILES} == ref.collapsed
    assert sum(ref.collapsed.values()) >= 1
    assert {ds: report.delivered[(source, ds)] for ds in DATASET_FILES} == {
        ds: len(ref.records[ds]) for ds in DATASET_FILES
    }


def test_a_redcap_defect_quarantines_the_records_it_sits_in_not_the_row(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference]
) -> None:
    """Rows holding a quarantined record also hold records that land (DTS §6: a REDCap row fans out)."""
    _, report = trial
    for source in REDCAP:
        ref = references[source]
        quarantined = {(q["dataset"], q["source_row"]) for q in report.expected_quarantine if q["source"] == source}
        landed_lines = {(ds, line) for ds, rows in ref.landed.items() for line, _, _ in rows}
        assert quarantined & landed_lines, source
        assert {q["column"] for q in report.expected_quarantine if q["source"] == source} <= {
            c for columns in DTS_COLUMNS.values() for c in columns
        }


def test_expected_quarantine_names_the_column_holding_the_fault(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference]
) -> None:
    _, report = trial
    for q in report.expected_quarantine:
        ref = references[q["source"]]
        at_line = [raw for line, raw in ref.records[q["dataset"]] if line == q["source_row"]]
        assert at_line, q
        column = "weight_kg" if q["column"] == "weight_lb" else q["column"]
        assert all(column in raw for raw in at_line)
        assert (q["column"] == "weight_lb") == (ref.fmt == "dts-xlsx" and column == "weight_kg")
        if q["reason_code"] == "MISSING_REQUIRED":
            assert any(raw[column] in ref.dialect.missing for raw in at_line)


def test_iwrs_lists_the_randomized_participants_of_every_site(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference]
) -> None:
    out, report = trial
    randomization = read_rows(transfer_dir(out, report, "IWRS") / "randomization.csv", "IWRS")
    randomized: dict[str, str] = {}
    for source in SITES:
        for _, row in references[source].records["participants"]:
            if row["status"] in {"ENROLLED", "COMPLETED", "WITHDRAWN"}:
                randomized[row["subject_id"]] = "ECT" if row["prior_ect"] == "Y" else "NO_ECT"
    assert {r["subject_id"]: r["stratum"] for r in randomization} == randomized
    assert {r["arm"] for r in randomization} == {"KAP", "KET", "ACP"}
    assert {r["site_id"] for r in randomization} == set(SITES)
    assert all(r["subject_id"].startswith(r["site_id"] + "-") for r in randomization)
    assert all(date.fromisoformat(r["randomized_on"]) for r in randomization)


def test_report_json_sits_beside_the_sources_and_matches_the_report(
    trial: tuple[Path, GenerationReport],
) -> None:
    out, report = trial
    saved = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    assert saved["expected_quarantine"] == report.expected_quarantine
    assert saved["delivered"]["S01"]["participants"] == report.delivered[("S01", "participants")]
    assert saved["phi_values"] == report.phi_values
    assert {t["source"]: t["format"] for t in saved["transfers"]} == FORMAT
    assert sum(saved["reason_counts"].values()) == len(report.expected_quarantine)


def test_personal_data_is_written_where_the_report_says(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference]
) -> None:
    out, report = trial
    assert report.phi_columns and report.phi_values
    assert {FORMAT[s] for s in report.phi_columns} >= {"dts-csv", "redcap"}
    written: set[str] = set()
    for source, columns in report.phi_columns.items():
        folder = transfer_dir(out, report, source)
        if FORMAT[source] == "redcap":
            with (folder / "redcap_export.csv").open(encoding="utf-8", newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r["redcap_event_name"] == "screening_arm_1"]
        elif FORMAT[source] == "dts-xlsx":
            rows = read_sheets(folder / "export.xlsx", source)["participants"]
        else:
            rows = read_rows(folder / "participants.csv", source)
        assert set(columns) <= set(rows[0])
        written |= {r[c] for r in rows for c in columns} - {""}
    assert written == set(report.phi_values)


FLAGS_OF_VALUES = {
    "AGE_DEVIATION",
    "DOSE_DEVIATION",
    "SAFETY_VITALS",
    "SAFETY_SUICIDALITY",
    "SAFETY_SAE",
    "UNCODED_TERM",
}
REDCAP_FLAGS = {"FORM_INCOMPLETE", "TOTAL_MISMATCH"}
DOSE_RANGES = {"IV": (0.5, 1.0), "IM": (0.5, 1.5), "SL": (100, 400), "IN": (28, 84)}
SUICIDALITY = {("CSSRS", 4): 1, ("CSSRS", 5): 1, ("CSSRS", 6): 1, ("PHQ9", 9): 1, ("MADRS", 10): 4}


def flags_of_landed_values(ref: Reference) -> set[tuple[str, str, Any]]:
    """(flag type, subject, visit) of every landed value breaking a protocol or safety rule (DTS §3, §4, §6)."""
    flags: set[tuple[str, str, Any]] = set()

    def landed(dataset: str) -> list[dict[str, Any]]:
        return [typed for _, typed, _ in ref.landed[dataset]]

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
    if ref.fmt != "redcap":
        return flags
    # A form saved at status 0 lands flagged; a calculated total other than the sum of its items is a query.
    for rows in ref.landed.values():
        for _, typed, raw in rows:
            if raw["_status"] == "0":
                flags.add(("FORM_INCOMPLETE", typed["subject_id"], typed.get("visit")))
    landed_items = {(line, r["instrument"], r["item"]) for line, r, _ in ref.landed["assessment_items"]}
    for form in ref.forms:
        present = {k: v for k, v in form.items.items() if v != ""}
        instrument = REDCAP_INSTRUMENTS.get(form.form, "")
        every_item_landed = all((form.line, instrument, k) in landed_items for k in present)
        if form.total and every_item_landed and int(form.total) != sum(int(v) for v in present.values()):
            flags.add(("TOTAL_MISMATCH", form.subject, form.visit))
    return flags


@pytest.mark.parametrize("source", SITES)
def test_flag_worthy_values_are_exactly_the_injected_ones(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference], source: str
) -> None:
    _, report = trial
    kinds = FLAGS_OF_VALUES | (REDCAP_FLAGS if FORMAT[source] == "redcap" else set())
    injected = {
        (f["flag_type"], f["subject_id"], f["visit"])
        for f in report.injected_flags
        if f["source"] == source and f["flag_type"] in kinds
    }
    assert {flag for flag, _, _ in injected} == kinds
    assert flags_of_landed_values(references[source]) == injected


def test_incomplete_assessments_are_injected_by_leaving_out_an_item(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference]
) -> None:
    _, report = trial
    for flag in (f for f in report.injected_flags if f["flag_type"] == "INCOMPLETE_ASSESSMENT"):
        items: dict[str, set[str]] = defaultdict(set)
        for _, r in references[flag["source"]].records["assessment_items"]:
            if (r["subject_id"], r["visit"]) == (flag["subject_id"], flag["visit"]):
                items[r["instrument"]].add(r["item"])
        assert any(
            not {str(i + 1) for i in range(DESIGN.instruments[code].items)} <= present
            for code, present in items.items()
        )


@pytest.mark.parametrize("source", SITES)
def test_visits_fall_in_their_windows_unless_a_window_deviation_was_injected(
    trial: tuple[Path, GenerationReport], references: dict[str, Reference], source: str
) -> None:
    _, report = trial
    ref = references[source]
    bl = {r["subject_id"]: r["assessment_date"] for _, r, _ in ref.landed["assessment_items"] if r["visit"] == "BL"}
    sessions = {(r["subject_id"], r["visit"]): r["session_date"] for _, r, _ in ref.landed["sessions"]}
    assessments = {(r["subject_id"], r["visit"]): r["assessment_date"] for _, r, _ in ref.landed["assessment_items"]}
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


def _landed_by_key(ref: Reference) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    return {ds: {tuple(r[k] for k in KEYS[ds]): r for _, r, _ in rows} for ds, rows in ref.landed.items()}


def test_formats_as_renders_the_same_site_data_in_another_format(tmp_path: Path) -> None:
    """One site delivered as dts-csv, dts-xlsx and redcap: without defects the same records land (weights
    from pounds to within the pound's rounding); with defects csv and xlsx carry the same ones."""
    sources = {"S02": REGISTRY["S02"]}
    landed, reports = {}, {}
    for fmt in ("dts-csv", "dts-xlsx", "redcap"):
        for rate in (0.0, 0.03):
            out = tmp_path / f"{fmt}-{rate}"
            report = generate_trial(out, seed=2, participants_per_site=6, sources=sources, defect_rate=rate,
                                    formats_as={"S02": fmt})
            assert manifest(transfer_dir(out, report, "S02"))["format"] == report.formats["S02"] == fmt
            ref = reference(transfer_dir(out, report, "S02"), "S02")
            if rate:
                reports[fmt] = report
                expected = Counter((q["dataset"], q["source_file"], q["source_row"], q["reason_code"])
                                   for q in report.expected_quarantine)
                assert expected == ref.found and {q["reason_code"] for q in report.expected_quarantine} == set(REASONS)
            else:
                assert report.expected_quarantine == [] and sum(ref.found.values()) == 0
                landed[fmt] = _landed_by_key(ref)
    for fmt in ("dts-xlsx", "redcap"):
        for dataset, records in landed["dts-csv"].items():
            assert landed[fmt][dataset].keys() == records.keys()
            for key, record in records.items():
                other = landed[fmt][dataset][key]
                if record.get("weight_kg") is not None:
                    assert abs(other["weight_kg"] - record["weight_kg"]) < 0.03
                    other = {**other, "weight_kg": record["weight_kg"]}
                assert other == record
    as_csv, as_xlsx = reports["dts-csv"], reports["dts-xlsx"]
    assert [{**q, "source_file": ""} for q in as_csv.expected_quarantine] == [
        {**q, "source_file": "", "column": "weight_kg" if q["column"] == "weight_lb" else q["column"]}
        for q in as_xlsx.expected_quarantine
    ]
    assert as_csv.injected_flags == [{**f, "transfer_id": as_csv.transfers[0][1]} for f in as_xlsx.injected_flags]


def test_formats_as_takes_only_site_sources_and_known_formats(tmp_path: Path) -> None:
    for wrong in ({"IWRS": "dts-csv"}, {"S01": "odm-xml"}, {"S77": "redcap"}):
        with pytest.raises(ValueError, match="formats_as"):
            generate_trial(tmp_path, participants_per_site=2, formats_as=wrong)


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
