"""Stage 3 for `redcap` transfers: a REDCap raw export fanned out into the five datasets (DTS §4).

A REDCap row is one record at one event, or one instance of a repeating instrument, and holds
several conformed records: a participant, a session, a vital-signs timepoint, one assessment
item per filled item field, an adverse event. The export streams into DuckDB as text (exact
starting lines, personal-data columns never read), then one SQL `select` per dataset fans the
rows out, translating raw choice codes to DTS codes through the delivered data dictionary.

What the dictionary says (a field's form, type, choices and validation) is taken from it; what it
cannot say (event → visit, form → dataset, field → DTS column, item numbering) is the study's
template, `schemas/redcap.yaml`. Nothing is judged here: an unknown code or event passes through
unchanged and validation quarantines it; an empty value stays empty (conform makes it null).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import yaml

from flows.conform import missing_to_null, quote_ident, quote_literal
from flows.read import (
    RECORD,
    ROW,
    MalformedRecord,
    RawDataset,
    ReadFile,
    expected_rows,
    load_file,
    read_header,
    reject_duplicate_columns,
)
from flows.registry import Source
from flows.scratch import drop_temporary
from flows.settings import SCHEMAS_DIR
from flows.verify import Rejected, VerifiedTransfer, text_encoding
from schemas.datasets import DATASETS, PERSONAL_DATA_COLUMNS, instruments

EXPORT = "redcap_export.csv"
DICTIONARY = "data_dictionary.csv"
TEMPLATE_PATH = SCHEMAS_DIR / "redcap.yaml"
EXPORT_TABLE = "redcap_export_rows"
FORM_STATUS = "_form_status"
DELIVERED_TOTAL = "_delivered_total"
SITE_GROUP = "_site_group"
COMPLETE_SUFFIX = "_complete"
CHECKBOX_SEPARATOR = "___"
# `_record` = line * RECORD_SLOTS + the record's slot on its row: a block's items take SLOT_WIDTH slots.
SLOT_WIDTH = 100
RECORD_SLOTS = 10_000
# The data dictionary's own column names (REDCap's), as the reader uses them.
DICTIONARY_COLUMNS = {
    "field": "Variable / Field Name",
    "form": "Form Name",
    "type": "Field Type",
    "choices": "Choices, Calculations, OR Slider Labels",
    "validation": "Text Validation Type OR Show Slider Number",
}
# Columns every conformed record gets from the row itself rather than from a mapped field.
ROW_COLUMNS = ("subject_id", "visit")
ITEM_COLUMNS = ("instrument", "item", "score")
CHOICE_TYPES = ("radio", "dropdown", "checkbox")  # field types whose dictionary row lists their choices
COMMA_DECIMAL = re.compile(r"number(_\d+dp)?_comma_decimal")


# --- the template (schemas/redcap.yaml) -----------------------------------------------------------

@dataclass(frozen=True)
class Block:
    """Forms of the template feeding one dataset: one record per row where any of them is
    present, or (assessment forms) one record per filled item field."""

    dataset: str
    forms: tuple[str, ...]
    columns: dict[str, str]  # DTS column -> field
    slot: int  # the first `_record` slot of the block's records on a row
    instrument: str | None = None
    items: tuple[tuple[int, str], ...] = ()  # (item number, field)
    total: str | None = None
    most_severe_first: dict[str, tuple[str, ...]] | None = None  # checkbox field -> DTS codes

    @property
    def fields(self) -> list[str]:
        """Every field the block reads (the record id and event aside)."""
        return [*self.columns.values(), *(f for _, f in self.items), *([self.total] if self.total else [])]


@dataclass(frozen=True)
class Template:
    record_id: str
    event: str
    export_columns: tuple[str, ...]
    repeat_instrument: str | None
    site_group: str | None
    form_status: dict[str, str]  # raw `<form>_complete` code -> status
    type_choices: dict[str, dict[str, str]]  # field type -> built-in choices
    visits: dict[str, str]  # event -> visit (events with a visit only)
    event_forms: dict[str, tuple[str, ...]]
    blocks: tuple[Block, ...]

    @property
    def forms(self) -> list[str]:
        return list(dict.fromkeys(form for block in self.blocks for form in block.forms))

    def blocks_of(self, dataset: str) -> list[Block]:
        return [b for b in self.blocks if b.dataset == dataset]

    def datasets_of_form(self, form: str) -> list[str]:
        return [b.dataset for b in self.blocks if form in b.forms]


def _codes(mapping: dict[Any, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in mapping.items()}


def parse_template(spec: dict[str, Any]) -> Template:
    """The template as the reader uses it; a template that cannot work is a programming error."""
    blocks: list[Block] = []
    for dataset, entries in spec["datasets"].items():
        if dataset not in DATASETS:
            raise ValueError(f"redcap template: unknown dataset {dataset!r}")
        known = {c.name for c in DATASETS[dataset].columns}
        for entry in entries:
            columns = {str(k): str(v) for k, v in (entry.get("columns") or {}).items()}
            wrong = [c for c in columns if c not in known or c in ROW_COLUMNS + ITEM_COLUMNS]
            if wrong:
                raise ValueError(f"redcap template: {dataset} cannot map column(s) {', '.join(wrong)}")
            instrument = entry.get("instrument")
            items: tuple[tuple[int, str], ...] = ()
            if instrument is not None:
                if dataset != "assessment_items" or instrument not in instruments() or not entry.get("items"):
                    raise ValueError(f"redcap template: instrument {instrument!r} needs an assessment block "
                                     "with its item fields")
                count = instruments()[instrument]["items"]
                if count >= SLOT_WIDTH:
                    raise ValueError(f"redcap template: {instrument} has more items than a block's slots")
                items = tuple((n, entry["items"].format(item=n)) for n in range(1, count + 1))
            elif dataset == "assessment_items":
                raise ValueError("redcap template: an assessment block needs its instrument")
            severity = {str(k): tuple(str(c) for c in v) for k, v in (entry.get("most_severe_first") or {}).items()}
            blocks.append(Block(dataset, tuple(entry["forms"]), columns, len(blocks) * SLOT_WIDTH, instrument,
                                items, entry.get("total"), severity or None))
    if len(blocks) * SLOT_WIDTH > RECORD_SLOTS:
        raise ValueError("redcap template: too many blocks for the record numbering")
    events = spec["events"]
    return Template(
        record_id=spec["record_id"],
        event=spec["event"],
        export_columns=tuple(spec.get("export_columns") or ()),
        repeat_instrument=spec.get("repeat_instrument"),
        site_group=spec.get("site_group"),
        form_status=_codes(spec["form_status"]),
        type_choices={t: _codes(c) for t, c in (spec.get("type_choices") or {}).items()},
        visits={e: str(v["visit"]) for e, v in events.items() if v.get("visit")},
        event_forms={e: tuple(v.get("forms") or ()) for e, v in events.items()},
        blocks=tuple(blocks),
    )


@cache
def load_template(path: Path = TEMPLATE_PATH) -> Template:
    with open(path, encoding="utf-8") as fh:
        return parse_template(yaml.safe_load(fh))


# --- the data dictionary --------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One field of the delivered data dictionary."""

    name: str
    form: str
    type: str
    choices: dict[str, str]  # raw code -> label (the DTS code); empty for fields without choices
    validation: str
    error: str | None = None  # why its choices cannot be read (rejects only a field the template reads)


def parse_choices(text: str) -> tuple[dict[str, str], str | None]:
    """REDCap's `code, label | code, label` (a label may itself hold commas), or why not."""
    choices: dict[str, str] = {}
    for part in text.split("|"):
        if not part.strip():
            continue
        code, comma, label = part.partition(",")
        if not comma or not code.strip() or code.strip() in choices:
            return {}, f"{part.strip()!r} is not a 'code, label' choice of its own"
        choices[code.strip()] = label.strip()
    return choices, None


def read_dictionary(path: Path, encoding: str, delimiter: str) -> tuple[dict[str, Field], int]:
    """The dictionary's fields by name, and its data rows (for the manifest)."""
    try:
        with open(path, encoding=encoding, newline="") as fh:
            records = [r for r in csv.reader(fh, delimiter=delimiter) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Rejected(f"{DICTIONARY} cannot be read as CSV: {exc}") from None
    if not records:
        raise Rejected(f"{DICTIONARY} is empty: it has no header")
    header = records[0]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise Rejected(f"{DICTIONARY}: column {duplicated[0]!r} appears twice in the header")
    missing = [c for c in DICTIONARY_COLUMNS.values() if c not in header]
    if missing:
        raise Rejected(f"{DICTIONARY} lacks REDCap's column(s) {', '.join(repr(c) for c in missing)}")
    index = {key: header.index(name) for key, name in DICTIONARY_COLUMNS.items()}
    fields: dict[str, Field] = {}
    for number, record in enumerate(records[1:], start=2):
        if len(record) != len(header):
            raise Rejected(f"{DICTIONARY} cannot be read: record {number} has {len(record)} fields where the "
                           f"header has {len(header)}")
        name, field_type = record[index["field"]].strip(), record[index["type"]].strip().lower()
        if name in fields:
            raise Rejected(f"{DICTIONARY} defines field {name} twice")
        choices, error = parse_choices(record[index["choices"]]) if field_type in CHOICE_TYPES else ({}, None)
        fields[name] = Field(name, record[index["form"]].strip(), field_type, choices,
                             record[index["validation"]].strip().lower(), error)
    return fields, len(records) - 1


def checkbox_column(field: str, code: str) -> str:
    """REDCap's export column of one checkbox choice: `field___code`, the code lower case with
    anything but letters, digits and `_` written as `_`."""
    return f"{field}{CHECKBOX_SEPARATOR}{re.sub(r'[^a-z0-9_]', '_', code.lower())}"


# --- the export's header ----------------------------------------------------------------------------

@dataclass
class Export:
    """The export's header against the template and the dictionary: what is read, and why."""

    columns: list[str]  # read, in file order
    personal_data: list[str]
    ignored: list[str]
    checkboxes: dict[str, list[tuple[str, str]]]  # checkbox field -> (column, label), dictionary order first


def check_template_fields(template: Template, fields: dict[str, Field]) -> None:
    """Every field of the template is in the dictionary, on one of its block's forms."""
    for block in template.blocks:
        for name in block.fields:
            if name not in fields:
                raise Rejected(f"{DICTIONARY} lacks the field {name} of the REDCap template")
            if fields[name].form not in block.forms:
                raise Rejected(f"{DICTIONARY} puts {name} on form {fields[name].form}; the REDCap template "
                               f"has it on {' or '.join(block.forms)}")
            if fields[name].error:
                raise Rejected(f"{DICTIONARY}: the choices of {name} cannot be read: {fields[name].error}")


def inspect_export(path: Path, encoding: str, delimiter: str, template: Template,
                   fields: dict[str, Field]) -> Export:
    header = read_header(path, encoding, delimiter)
    seen = reject_duplicate_columns(EXPORT, header)
    required = [template.record_id, template.event, *(f + COMPLETE_SUFFIX for f in template.forms)]
    checkboxes: dict[str, list[tuple[str, str]]] = {}
    for block in template.blocks:
        for name in block.fields:
            field = fields[name]
            if field.type != "checkbox":
                required.append(name)
                continue
            choices = [(checkbox_column(name, code), label) for code, label in field.choices.items()]
            required += [column for column, _ in choices]
            # a ticked choice the dictionary does not know passes through as its own code
            prefix = name + CHECKBOX_SEPARATOR
            known = {column for column, _ in choices}
            choices += [(c, c[len(prefix):]) for c in header if c.startswith(prefix) and c not in known]
            checkboxes[name] = choices
    missing = [c for c in dict.fromkeys(required) if c not in seen]
    if missing:
        raise Rejected(f"{EXPORT} lacks the required column(s) {', '.join(missing[:10])}"
                       f"{' …' if len(missing) > 10 else ''}")
    read = set(required) | {c for cs in checkboxes.values() for c, _ in cs}
    if template.site_group in seen:  # a project without data access groups exports none
        read.add(template.site_group)
    personal = [c for c in header if c.lower() in PERSONAL_DATA_COLUMNS]
    return Export(
        columns=[c for c in header if c in read and c not in personal],
        personal_data=personal,
        # REDCap's own columns (repeat instrument and instance, DAG) are known: not read, not warned about
        ignored=[c for c in header if c not in read and c not in personal and c not in template.export_columns],
        checkboxes=checkboxes,
    )


# --- the fan-out: one select per dataset --------------------------------------------------------------

@dataclass
class FanOut:
    """SQL expressions over the export's rows, for one transfer's template, dictionary and dialect."""

    template: Template
    fields: dict[str, Field]
    export: Export
    source: Source

    @property
    def missing(self) -> tuple[str, ...]:
        return self.source.missing_values or ("",)

    def filled(self, column: str, also_empty: tuple[str, ...] = ()) -> str:
        """The column holds a value (null, which the reader never makes, counts as empty in a `where`)."""
        codes = [quote_literal(v) for v in dict.fromkeys((*self.missing, *also_empty))]
        if len(codes) == 1:
            return f"{quote_ident(column)} <> {codes[0]}"
        return f"{quote_ident(column)} not in ({', '.join(codes)})"

    def value(self, name: str, block: Block) -> str:
        """The DTS text of a field: its raw choice code translated, anything else as delivered."""
        field = self.fields[name]
        if field.type == "checkbox":
            return self.checkbox(name, block)
        expr = quote_ident(name)
        decimal = self.source.decimal or "."
        if COMMA_DECIMAL.fullmatch(field.validation) and decimal != ",":
            # the dictionary says this number is written with a decimal comma
            expr = (f"case when regexp_full_match({expr}, '[+-]?[0-9]*,[0-9]+') "
                    f"then replace({expr}, ',', {quote_literal(decimal)}) else {expr} end")
        choices = field.choices or self.template.type_choices.get(field.type, {})
        if not choices:
            return expr
        whens = " ".join(f"when {quote_literal(code)} then {quote_literal(label)}" for code, label in choices.items())
        return f"case {expr} {whens} else {expr} end"  # an unknown code passes through: OUT_OF_RANGE

    def checkbox(self, name: str, block: Block) -> str:
        """One DTS code from a checkbox's 0/1 columns: the most severe ticked choice, '' if none.
        A choice whose label the template cannot rank, or a column holding neither 0 nor 1,
        passes through first, so that validation quarantines it."""
        order = (block.most_severe_first or {}).get(name)
        if order is None:
            raise Rejected(f"{DICTIONARY} makes {name} a checkbox; the REDCap template reads it as one value")
        choices = self.export.checkboxes[name]
        not_ticks = " ".join(f"when {self.filled(c, ('0', '1'))} then {quote_ident(c)}" for c, _ in choices)
        ranked = sorted(choices, key=lambda choice: order.index(choice[1]) if choice[1] in order else -1)
        ticks = " ".join(f"when {quote_ident(c)} = '1' then {quote_literal(label)}" for c, label in ranked)
        return f"case {not_ticks} {ticks} else '' end"

    def visit(self) -> str:
        event = quote_ident(self.template.event)
        whens = " ".join(f"when {quote_literal(e)} then {quote_literal(v)}" for e, v in self.template.visits.items())
        return f"case {event} {whens} else {event} end"  # an event without a visit passes its name through

    def present(self, block: Block) -> str:
        """A form is present on a row when a field of the block on it is filled, a checkbox of it is
        ticked, or its `<form>_complete` status is filled."""
        tests = []
        for form in block.forms:
            for name in block.fields:
                if self.fields[name].form != form:
                    continue
                if name in self.export.checkboxes:
                    tests += [self.filled(c, ("0",)) for c, _ in self.export.checkboxes[name]]
                else:
                    tests.append(self.filled(name))
            tests.append(self.filled(form + COMPLETE_SUFFIX))
        return "(" + " or ".join(tests) + ")"

    def form_status(self, block: Block) -> str:
        """The status of the block's form; of several forms, the least complete one filled."""
        statuses = []
        for form in block.forms:
            raw = missing_to_null(quote_ident(form + COMPLETE_SUFFIX), self.missing)
            whens = " ".join(f"when {quote_literal(c)} then {quote_literal(s)}"
                             for c, s in self.template.form_status.items())
            statuses.append(f"case {raw} {whens} else {raw} end")
        if len(statuses) == 1:
            return statuses[0]
        listed = "[" + ", ".join(statuses) + "]"
        least_first = " ".join(f"when list_contains({listed}, {quote_literal(s)}) then {quote_literal(s)}"
                               for s in self.template.form_status.values())
        return f"case {least_first} else coalesce({', '.join(statuses)}) end"

    def block_select(self, block: Block) -> str:
        dataset = DATASETS[block.dataset]
        parts = []
        for column in dataset.columns:
            if column.name == "subject_id":
                expr = quote_ident(self.template.record_id)
            elif column.name == "visit":
                expr = self.visit()
            elif column.name == "instrument":
                expr = quote_literal(block.instrument or "")
            elif column.name == "item":  # the item lists unnest in parallel: one row per item field
                expr = "unnest([" + ", ".join(quote_literal(str(n)) for n, _ in block.items) + "])"
            elif column.name == "score":  # a score is the item's raw choice code (C-SSRS: yes/no as 1/0)
                expr = "unnest([" + ", ".join(quote_ident(f) for _, f in block.items) + "])"
            elif column.name in block.columns:
                expr = self.value(block.columns[column.name], block)
            else:
                expr = "''"  # a column the block does not deliver: missing
            parts.append(f"{expr} as {quote_ident(column.name)}")
        group = (missing_to_null(quote_ident(self.template.site_group), self.missing)
                 if self.template.site_group in self.export.columns else "null::varchar")
        parts += [ROW, f"{self.form_status(block)} as {FORM_STATUS}", f"{group} as {SITE_GROUP}"]
        passthrough = [FORM_STATUS, SITE_GROUP]
        if block.dataset == "assessment_items":
            total = missing_to_null(quote_ident(block.total), self.missing) if block.total else "null::varchar"
            parts.append(f"{total} as {DELIVERED_TOTAL}")
            passthrough.append(DELIVERED_TOTAL)
        rows = f"select {', '.join(parts)} from {EXPORT_TABLE} where {self.present(block)}"
        names = ", ".join(quote_ident(c.name) for c in dataset.columns)
        if block.items:
            # one record per filled item field: an empty item on a present form is a missing item
            record = f"{ROW} * {RECORD_SLOTS} + {block.slot} + cast(item as bigint)"
            where = f" where {self.filled('score')}"
        else:
            record, where = f"{ROW} * {RECORD_SLOTS} + {block.slot}", ""
        return f"select {names}, {ROW}, {record} as {RECORD}, {', '.join(passthrough)} from ({rows}){where}"

    def dataset_select(self, dataset: str) -> str:
        blocks = self.template.blocks_of(dataset)
        if blocks:
            return "\nunion all\n".join(self.block_select(b) for b in blocks)
        names = ", ".join(f"''::varchar as {quote_ident(c.name)}" for c in DATASETS[dataset].columns)
        extra = f", null::varchar as {DELIVERED_TOTAL}" if dataset == "assessment_items" else ""
        return (f"select {names}, null::bigint as {ROW}, null::bigint as {RECORD}, null::varchar as {FORM_STATUS}, "
                f"null::varchar as {SITE_GROUP}{extra} where false")


# --- malformed rows ----------------------------------------------------------------------------------

def malformed_by_dataset(rf: ReadFile, template: Template) -> dict[str, list[MalformedRecord]]:
    """A row that cannot be read (its field count differs from the header's) cannot be split into
    the records it holds: it is one UNPARSEABLE record of the first dataset its repeating
    instrument or its event feeds (participants when neither can be told)."""
    if not rf.malformed:
        return {}
    starts = {m.line: m for m in rf.malformed}
    found: dict[str, list[MalformedRecord]] = {}
    with open(rf.path, encoding=rf.encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=rf.delimiter)
        position = {name: i for i, name in enumerate(next(reader))}
        previous_end = reader.line_num
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if start not in starts:
                continue
            values = {name: record[i] for name, i in position.items() if i < len(record)}
            repeated = values.get(template.repeat_instrument or "", "")
            forms = [repeated] if repeated else template.event_forms.get(values.get(template.event, ""), ())
            datasets = [d for d in DATASETS if any(d in template.datasets_of_form(f) for f in forms)]
            found.setdefault(datasets[0] if datasets else "participants", []).append(starts[start])
    return found


# --- the reader -------------------------------------------------------------------------------------

def read_redcap(con: duckdb.DuckDBPyConnection, transfer: VerifiedTransfer) -> dict[str, RawDataset]:
    """The REDCap export of a transfer as the five datasets' text tables `raw_<dataset>`: the
    dictionary and the export's header checked first, then the export streamed and fanned out."""
    template = load_template()
    source = transfer.source
    delimiter = source.delimiter or ","
    for name in (EXPORT, DICTIONARY):
        if name not in transfer.files:
            raise Rejected(f"required file {name} is missing")
    dictionary_path = transfer.files[DICTIONARY].path
    fields, dictionary_rows = read_dictionary(dictionary_path, text_encoding(source, DICTIONARY) or "utf-8",
                                              delimiter)
    if dictionary_rows != expected_rows(transfer, DICTIONARY):
        raise Rejected(f"{DICTIONARY} holds {dictionary_rows} data rows; the manifest says "
                       f"{expected_rows(transfer, DICTIONARY)}")
    check_template_fields(template, fields)
    path = transfer.files[EXPORT].path
    encoding = text_encoding(source, EXPORT) or "utf-8"
    export = inspect_export(path, encoding, delimiter, template, fields)
    fan_out = FanOut(template, fields, export, source)
    selects = {name: fan_out.dataset_select(name) for name in DATASETS}  # a template that cannot read fails here
    # one file holds every dataset: the ReadFile's dataset is only a label here
    rf = ReadFile(DATASETS["participants"], path, export.columns, export.personal_data, export.ignored, encoding,
                  delimiter)
    rf.physical_lines = transfer.files[EXPORT].lines
    try:
        load_file(con, rf, EXPORT_TABLE)
        if rf.records != expected_rows(transfer, EXPORT):
            raise Rejected(f"{EXPORT} holds {rf.records} data rows; the manifest says "
                           f"{expected_rows(transfer, EXPORT)}")
        malformed = malformed_by_dataset(rf, template)
        raw: dict[str, RawDataset] = {}
        for i, (name, select) in enumerate(selects.items()):
            table = f"raw_{name}"
            con.execute(f"create or replace temp table {table} as {select}")
            (records,) = con.execute(f"select count(*) from {table}").fetchone() or (0,)
            passthrough = (FORM_STATUS, SITE_GROUP) + ((DELIVERED_TOTAL,) if name == "assessment_items" else ())
            bad = malformed.get(name, [])
            # personal data and extra columns are the export's, reported once for the transfer
            raw[name] = RawDataset(DATASETS[name], table, EXPORT, [c.name for c in DATASETS[name].columns],
                                   int(records) + len(bad), bad, export.personal_data if i == 0 else [],
                                   export.ignored if i == 0 else [], passthrough)
        return raw
    finally:
        drop_temporary(con, EXPORT_TABLE)

