"""Great Expectations on the published tables, run on the run's draft after every landing.

The suites are data: `schemas/expectations.yaml` (one suite per core table, plus cross-table
questions answered by small DuckDB queries), with bounds, codes and patterns taken from the pandera
models and the study YAML rather than written twice. A failed expectation is reported — in the
returned report, `ops.expectations` and the Data Docs — and changes nothing in the warehouse.

Memory: no table is ever pulled whole into pandas. A table suite is validated in batches of whole
site partitions, at most `MAX_BATCH_ROWS` rows each (a bigger site is a batch of its own), holding
only the columns the suite reads; a query suite validates one small frame (a row per site,
subject or count) for all the sites of the run.

Results are per site. Every expectation is a map expectation (a verdict per row), so a batch that
passes passes for each of its sites, and a failure of a batch of several sites is validated again
on each site that may hold an unexpected row, which gives each site its own counts and examples.
(Great Expectations costs ~20–60 ms per expectation and batch whatever the rows, so validating
100 sites one by one would cost minutes; batches of several sites keep it to seconds.)

Great Expectations is imported inside the functions that need it: the import costs 8–12 s, and
the CLI and the tests import `flows` eagerly. A run that has transfers to land calls `preload()`
first, which imports it on a background thread while the transfers are read and validated (DuckDB
and Arrow release the interpreter while they work). That hides the import where a core is free for
it or where it waits on the disk (a cold start); on two busy cores it only takes turns with DuckDB's
threads (measured at 10 M item rows: read + validate + land 2.3 s slower, the whole run no faster). Analytics
are off (`GX_ANALYTICS_ENABLED=false` from `flows.settings`, and `analytics_enabled=False` in the
context's configuration); nothing here opens a socket, and the Data Docs are files.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import yaml

from flows.settings import SCHEMAS_DIR
from schemas.datasets import DATASETS, instruments

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult
    from great_expectations.core.validation_definition import ValidationDefinition
    from great_expectations.data_context import AbstractDataContext
    from great_expectations.expectations.expectation import Expectation as GxExpectation

EXPECTATIONS_YAML = SCHEMAS_DIR / "expectations.yaml"
STUDY_YAML = SCHEMAS_DIR / "study.yaml"
# A batch of site partitions stays below this many rows (+~200 MB peak RSS for the widest suite),
# so that validation stays far inside the run's 1.5 GB while batching small sites together.
MAX_BATCH_ROWS = 200_000
# Unexpected rows named per failed expectation and site (observed, Data Docs).
EXAMPLES = 5
# A batch is first validated for the verdict only (half the cost of a summary); one that fails is
# validated again with counts and examples.
VERDICT_FORMAT: dict[str, Any] = {"result_format": "BOOLEAN_ONLY"}
DETAIL_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES}
SEVERITIES = ("error", "warning")
CATEGORIES = ("conformance", "completeness", "plausibility")
GX_SEVERITY = {"error": "critical", "warning": "warning"}
DOCS_SITE = "warehouse"
# Columns an expectation reads, by its keyword.
COLUMN_KWARGS = ("column", "column_A", "column_B")

OPS_EXPECTATIONS_DDL = """
create table if not exists ops.expectations (
    run_id varchar not null,
    suite varchar not null,
    expectation varchar not null,
    table_name varchar,
    site_id varchar,
    success boolean not null,
    observed varchar,
    description varchar,
    severity varchar not null,
    checked_at timestamptz not null,
)"""


@dataclass
class ExpectationResult:
    """One expectation's verdict on one site's rows (site_id None: not attributable to a site)."""

    suite: str
    expectation: str
    table: str
    site_id: str | None
    success: bool
    observed: str
    description: str
    severity: str  # error | warning


@dataclass
class ExpectationReport:
    results: list[ExpectationResult]
    docs_index: Path | None
    seconds: float
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    sites: list[str] = field(default_factory=list)

    @property
    def evaluated(self) -> int:
        return len(self.results)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def failures(self) -> list[ExpectationResult]:
        return [r for r in self.results if not r.success]

    @property
    def errors(self) -> list[ExpectationResult]:
        """Failures that mean the warehouse contract is broken (not only implausible data)."""
        return [r for r in self.failures if r.severity == "error"]

    def summary_lines(self, limit: int = 20) -> list[str]:
        """The run summary's lines: counts, then the failures (at most `limit`)."""
        warnings = self.failed - len(self.errors)
        lines = [f"expectations: {self.evaluated} evaluated on {len(self.sites)} site(s), {self.failed} failed "
                 f"({len(self.errors)} error, {warnings} warning) in {self.seconds:.1f} s"
                 + (f"; Data Docs {self.docs_index}" if self.docs_index else "")]
        lines += [f"  FAILED [{r.severity}] {r.suite}.{r.expectation} at {r.site_id or 'all sites'} ({r.table}): "
                  f"{r.observed}" for r in self.failures[:limit]]
        if self.failed > limit:
            lines.append(f"  … and {self.failed - limit} more in ops.expectations")
        return lines


# ---------------------------------------------------------------------------------------------
# The catalogue: schemas/expectations.yaml resolved into plain specs (no Great Expectations here)


@dataclass(frozen=True)
class ExpectationSpec:
    id: str
    type: str
    kwargs: dict[str, Any]
    table: str
    where: dict[str, Any]
    category: str
    severity: str
    description: str

    @property
    def columns(self) -> list[str]:
        """The frame columns the expectation reads, its row condition's included."""
        named = [self.kwargs[k] for k in COLUMN_KWARGS if k in self.kwargs]
        return list(dict.fromkeys([*named, *self.kwargs.get("column_list", []), *self.where]))

    @property
    def value_columns(self) -> list[str]:
        named = [self.kwargs[k] for k in COLUMN_KWARGS if k in self.kwargs]
        return list(dict.fromkeys([*named, *self.kwargs.get("column_list", [])]))


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    table: str | None  # a core table, validated in batches of site partitions
    query: str | None  # or a query answering one small frame for the run's sites
    key: tuple[str, ...]  # the columns that name a row in `observed`
    expectations: tuple[ExpectationSpec, ...]
    constants: dict[str, Any] = field(default_factory=dict)  # catalogue parameters its query names
    join: str = ""  # a table suite's joins: reference columns beside each row

    @property
    def columns(self) -> list[str]:
        """What a table suite selects: the site, the key, and whatever an expectation reads."""
        return list(dict.fromkeys(["site_id", *self.key, *(c for e in self.expectations for c in e.columns)]))


class _Nothing(Exception):
    """A reference resolved to nothing: the expectation is not made (control flow, not an error)."""


@dataclass(frozen=True)
class _Scope:
    """What `$…` references resolve against."""

    parameters: dict[str, Any]
    study: dict[str, Any]
    dataset: str | None
    bindings: dict[str, Any]

    def lookup(self, path: str) -> Any:
        head, _, rest = path.partition(".")
        if head == "key":
            if self.dataset is None:
                raise ValueError("$key needs the suite's `dataset`")
            value: Any = list(DATASETS[self.dataset].key)
        elif head == "param":
            value = self.parameters[rest]
        elif head == "study":
            value = self.study
            for part in rest.split("."):
                value = value[part]
        elif head == "instruments":
            name, _, attribute = rest.partition(".")
            value = instruments()[name][attribute]
        elif head == "instrument":
            value = instruments()[self.bindings["instrument"]][rest]
        else:
            raise ValueError(f"unknown reference ${path}")
        if value is None:
            raise _Nothing(path)
        return value

    def resolve(self, value: Any) -> Any:
        if isinstance(value, str):
            if value.startswith("$"):
                return self.lookup(value[1:])
            for name, bound in self.bindings.items():
                value = value.replace("{" + name + "}", str(bound))
            return value
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value


def _model_column(dataset: str | None, column: str) -> Any:
    if dataset is None:
        raise ValueError(f"from_model on {column} needs the suite's `dataset`")
    return DATASETS[dataset].model.to_schema().columns[column]


def model_kwargs(dataset: str | None, column: str, kind: str) -> dict[str, Any]:
    """The bounds, codes or pattern of a column of a dataset's pandera model, as GX kwargs."""
    checks = {c.name: c.statistics for c in _model_column(dataset, column).checks}
    found: dict[str, Any] = {}
    if kind == "range":
        if "in_range" in checks:
            s = checks["in_range"]
            found = {"min_value": s["min_value"], "max_value": s["max_value"],
                     "strict_min": not s.get("include_min", True), "strict_max": not s.get("include_max", True)}
        one_sided = (("greater_than", "min_value", True), ("greater_than_or_equal_to", "min_value", False),
                     ("less_than", "max_value", True), ("less_than_or_equal_to", "max_value", False))
        for name, bound, strict in one_sided:
            if name in checks:
                found[bound] = checks[name][bound]
                found["strict_min" if bound == "min_value" else "strict_max"] = strict
    elif kind == "codes" and "isin" in checks:
        found = {"value_set": list(checks["isin"]["allowed_values"])}
    elif kind == "pattern" and "str_matches" in checks:
        found = {"regex": checks["str_matches"]["pattern"]}
    elif kind not in ("range", "codes", "pattern"):
        raise ValueError(f"from_model is range, codes or pattern, not {kind!r}")
    if not found:
        raise ValueError(f"the {dataset} model has no {kind} check on {column}")
    return found


def _repetitions(entry: dict[str, Any], dataset: str | None) -> list[dict[str, Any]]:
    each = entry.get("for_each")
    if each is None:
        return [{}]
    if each == "instrument":
        return [{"instrument": name} for name in instruments()]
    if each == "dataset":
        return [{"dataset": name} for name in DATASETS]
    if isinstance(each, dict) and len(each) == 1:
        ((name, values),) = each.items()
        return [{name: value} for value in values]
    raise ValueError(f"for_each is instrument, dataset or {{name: [values]}}, not {each!r}")


def _expectations(suite: str, spec: dict[str, Any], parameters: dict[str, Any],
                  study: dict[str, Any]) -> Iterator[ExpectationSpec]:
    dataset = spec.get("dataset")
    default_table = spec.get("table") or ", ".join(spec.get("tables", []))
    for entry in spec["expectations"]:
        for bindings in _repetitions(entry, dataset):
            scope = _Scope(parameters, study, dataset, bindings)
            try:
                kwargs = scope.resolve(entry.get("kwargs", {}))
            except _Nothing:
                continue  # e.g. CSSRS has no total: no total range to expect
            if kind := entry.get("from_model"):
                kwargs = {**model_kwargs(dataset, kwargs["column"], kind), **kwargs}
            expectation = ExpectationSpec(
                id=scope.resolve(entry["id"]), type=entry["type"], kwargs=kwargs,
                table=scope.resolve(entry.get("table", default_table)), where=scope.resolve(entry.get("where", {})),
                category=entry["category"], severity=entry["severity"],
                description=" ".join(scope.resolve(entry["description"]).split()))
            if expectation.severity not in SEVERITIES or expectation.category not in CATEGORIES:
                raise ValueError(f"{suite}.{expectation.id}: severity is one of {SEVERITIES}, "
                                 f"category one of {CATEGORIES}")
            if not expectation.type.startswith("expect_"):
                raise ValueError(f"{suite}.{expectation.id}: {expectation.type} is not an expectation type")
            yield expectation


@cache
def load_suites(path: Path = EXPECTATIONS_YAML) -> tuple[SuiteSpec, ...]:
    """The suites of the catalogue, every reference resolved."""
    with open(path, encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    with open(STUDY_YAML, encoding="utf-8") as fh:
        study = yaml.safe_load(fh)
    base = _Scope({}, study, None, {})
    parameters = {name: base.resolve(value) for name, value in document.get("parameters", {}).items()}
    suites = []
    for name, spec in document["suites"].items():
        if ("table" in spec) == ("query" in spec):
            raise ValueError(f"suite {name}: give a `table` or a `query`")
        dataset = spec.get("dataset")
        key = tuple(spec.get("key", DATASETS[dataset].key if dataset else ()))
        expectations = tuple(_expectations(name, spec, parameters, study))
        ids = [e.id for e in expectations]
        if len(ids) != len(set(ids)):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"suite {name}: expectation ids listed twice: {twice}")
        query = GENERATED_QUERIES[spec["query"]]() if spec.get("query") in GENERATED_QUERIES else spec.get("query")
        constants = _query_constants(name, query, parameters) if query else {}
        suites.append(SuiteSpec(name, spec.get("table"), query, key, expectations, constants, spec.get("join", "")))
    return tuple(suites)


def required_columns_query() -> str:
    """One row per site, dataset and column its model requires: the column's missing values."""
    parts = [f"select site_id, '{name}' as table_name, '{column.name}' as column_name, count(*) as records, "
             f"count(*) filter (where \"{column.name}\" is null) as missing "
             f"from core.{name} where list_contains($sites, site_id) group by all"
             for name, dataset in DATASETS.items() for column in dataset.columns if column.required]
    return "\nunion all\n".join(parts) + "\norder by all"


GENERATED_QUERIES = {"required_columns": required_columns_query}

# The run's own query parameters; every other `$name` of a query is a catalogue parameter.
RUN_PARAMETERS = ("sites", "datasets")


def _query_constants(suite: str, query: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """The catalogue parameters a query names (DuckDB refuses parameters a query does not use)."""
    names = [n for n in dict.fromkeys(re.findall(r"\$(\w+)", query)) if n not in RUN_PARAMETERS]
    if unknown := [n for n in names if n not in parameters]:
        raise ValueError(f"suite {suite}: query parameters not in `parameters`: {unknown}")
    return {n: parameters[n] for n in names}


def query_parameters(suite: SuiteSpec, sites: list[str]) -> dict[str, Any]:
    assert suite.query is not None
    run = {"sites": sites, "datasets": list(DATASETS)}
    return {**suite.constants, **{n: v for n, v in run.items() if f"${n}" in suite.query}}


# ---------------------------------------------------------------------------------------------
# What to validate: the sites and their batches


def sites_in_scope(con: duckdb.DuckDBPyConnection, sites: set[str] | None) -> list[str]:
    """The sites to validate: the given ones, or every site with data or a landed transfer; never
    a source whose list lands only in the unblinded store (the IWRS)."""
    from flows.registry import load_registry

    unblinded = {name for name, source in load_registry().items() if source.format == "iwrs"}
    unblinded |= {row[0] for row in con.execute("select distinct source from ops.transfers where format = 'iwrs'")
                  .fetchall()}
    if sites is not None:
        return sorted(set(sites) - unblinded)
    tables = " union ".join(f"select distinct site_id from core.{name}" for name in (*DATASETS, "assessments"))
    found = {row[0] for row in con.execute(
        f"{tables} union select distinct source from ops.loads where list_contains($datasets, dataset)",
        {"datasets": list(DATASETS)}).fetchall()}
    return sorted(found - unblinded - {None})


def site_groups(counts: dict[str, int], sites: list[str], max_rows: int = MAX_BATCH_ROWS) -> list[list[str]]:
    """Consecutive sites in batches of at most `max_rows` rows; a bigger site is a batch of its own."""
    groups: list[list[str]] = []
    rows = 0
    for site in sites:
        n = counts.get(site, 0)
        if not groups or rows + n > max_rows:
            groups.append([])
            rows = 0
        groups[-1].append(site)
        rows += n
    return groups


def table_batches(con: duckdb.DuckDBPyConnection, suite: SuiteSpec, sites: list[str],
                  max_rows: int | None = None) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """A table suite's batches: whole site partitions, the suite's columns only, key order."""
    counts = dict(con.execute(f"select site_id, count(*) from {suite.table} where list_contains($sites, site_id) "
                              "group by all", {"sites": sites}).fetchall())
    columns = ", ".join(f'"{c}"' for c in suite.columns)
    order = ", ".join(f'"{c}"' for c in ("site_id", *suite.key))
    for group in site_groups(counts, sites, max_rows or MAX_BATCH_ROWS):
        yield group, fetch_frame(con, f"select {columns} from {suite.table} {suite.join} "
                                      f"where list_contains($sites, site_id) order by {order}", {"sites": group})


def fetch_frame(con: duckdb.DuckDBPyConnection, query: str, parameters: dict[str, Any]) -> pd.DataFrame:
    """A query's answer as pandas, through Arrow: 3–4 times faster than `.df()` on string columns."""
    return con.sql(query, params=parameters).to_arrow_table().to_pandas(date_as_object=False)


# ---------------------------------------------------------------------------------------------
# Great Expectations


@cache
def preload() -> threading.Thread:
    """Start importing Great Expectations on a daemon thread (once per process); wasted, not wrong,
    if the run lands nothing. Python's import lock makes `_Validation` wait for an import still
    running, and an import that failed here fails again, with its own error, where it is needed."""
    thread = threading.Thread(target=_try_import_gx, name="preload-great-expectations", daemon=True)
    thread.start()
    return thread


def _try_import_gx() -> None:
    # a failure here is reported by the import where it is needed
    with contextlib.suppress(Exception):
        import great_expectations.expectations.registry  # noqa: F401


class _Validation:
    """An ephemeral GX context holding one ExpectationSuite and one dataframe asset per suite."""

    def __init__(self, suites: tuple[SuiteSpec, ...], run_time: datetime) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), analytics_enabled=False,
                                   progress_bars=ProgressBarsConfig(globally=False), data_docs_sites={})
        self.context: AbstractDataContext = gx.get_context(mode="ephemeral", project_config=config)
        self.run_time = run_time
        # One dataframe asset for every suite: GX's execution engine keeps the last frame of each
        # asset it has seen, so one asset means at most one batch held beyond its validation.
        self.batch_definition: BatchDefinition = (self.context.data_sources.add_pandas("warehouse")
                                                  .add_dataframe_asset(name="batch")
                                                  .add_batch_definition_whole_dataframe("sites"))
        self.definitions: dict[str, ValidationDefinition] = {}
        self.expectations: dict[tuple[str, str], GxExpectation] = {}
        for suite in suites:
            built = [self._expectation(suite, e) for e in suite.expectations]
            self.expectations |= {(suite.name, e.id): g for e, g in zip(suite.expectations, built, strict=True)}
            gx_suite = self.context.suites.add(gx.ExpectationSuite(name=suite.name, expectations=built))
            self.definitions[suite.name] = self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=self.batch_definition, suite=gx_suite))

    @staticmethod
    def _expectation(suite: SuiteSpec, spec: ExpectationSpec) -> GxExpectation:
        from great_expectations.expectations.expectation import (
            ColumnMapExpectation,
            ColumnPairMapExpectation,
            MulticolumnMapExpectation,
        )
        from great_expectations.expectations.registry import get_expectation_impl
        from great_expectations.expectations.row_conditions import Column

        implementation = get_expectation_impl(spec.type)
        if not issubclass(implementation, ColumnMapExpectation | ColumnPairMapExpectation | MulticolumnMapExpectation):
            # a table-level verdict (a row count, a mean) cannot be told per site
            raise ValueError(f"{suite.name}.{spec.id}: {spec.type} is not a map expectation")
        condition = None
        for column, value in spec.where.items():
            term = Column(name=column) == value
            condition = term if condition is None else condition & term
        return implementation(**spec.kwargs, row_condition=condition, description=spec.description,
                              severity=GX_SEVERITY[spec.severity],
                              meta={"id": spec.id, "table": spec.table, "category": spec.category})

    def validate(self, suite: SuiteSpec, group: list[str], frame: pd.DataFrame) -> list[ExpectationResult]:
        """The suite on one batch, as results per site of the batch."""
        from great_expectations.core.run_identifier import RunIdentifier

        run_id = RunIdentifier(run_name=f"{suite.name}-{_label(group)}", run_time=self.run_time)
        definition = self.definitions[suite.name]
        outcome = definition.run(batch_parameters={"dataframe": frame}, result_format=VERDICT_FORMAT, run_id=run_id)
        if not outcome.success:
            # same run id: the detailed result replaces the verdict in the store, for the Data Docs
            outcome = definition.run(batch_parameters={"dataframe": frame}, result_format=DETAIL_FORMAT,
                                     run_id=run_id)
        by_id = {r.expectation_config.meta["id"]: r for r in outcome.results}
        passed = f"0 unexpected (batch of {len(frame)} rows of {len(group)} site{'s' if len(group) > 1 else ''})"
        results: list[ExpectationResult] = []
        site_batches: dict[str, tuple[pd.DataFrame, Any]] = {}
        for spec in suite.expectations:
            result = by_id[spec.id]
            if result.success:
                results += [ExpectationResult(suite.name, spec.id, spec.table, site, True, passed, spec.description,
                                              spec.severity) for site in group]
                continue
            if len(group) == 1:
                results.append(_result(suite, spec, group[0], result, frame))
                continue
            suspects = set(group)
            listed = (result.result or {}).get("partial_unexpected_index_list")
            if listed is not None and result.result.get("unexpected_count", 0) <= len(listed):
                suspects = {frame.at[i, "site_id"] for i in listed}  # every unexpected row is listed
            for site in group:
                if site not in suspects:
                    results.append(ExpectationResult(suite.name, spec.id, spec.table, site, True,
                                                     "0 unexpected (the batch's unexpected rows are other sites')",
                                                     spec.description, spec.severity))
                    continue
                if site not in site_batches:
                    site_frame = frame[frame["site_id"] == site].reset_index(drop=True)
                    batch = self.batch_definition.get_batch(batch_parameters={"dataframe": site_frame})
                    site_batches[site] = (site_frame, batch)
                site_frame, batch = site_batches[site]
                site_result = batch.validate(self.expectations[(suite.name, spec.id)], result_format=DETAIL_FORMAT)
                results.append(_result(suite, spec, site, site_result, site_frame))
        return results

    def build_docs(self, docs_dir: Path) -> Path:
        """Data Docs of this run's validations, built beside `docs_dir` and then swapped in whole."""
        docs_dir = docs_dir.resolve()
        building = docs_dir.with_name(f".{docs_dir.name}.building")
        shutil.rmtree(building, ignore_errors=True)
        self.context.add_data_docs_site(DOCS_SITE, {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(building)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False},
        })
        self.context.build_data_docs(site_names=[DOCS_SITE])
        _swap_in(building, docs_dir)
        return docs_dir / "index.html"


def _swap_in(built: Path, target: Path) -> None:
    """Replace `target` by `built`; refuses to replace a directory that is not Data Docs."""
    if target.exists() and any(target.iterdir()) and not (target / "index.html").is_file():
        shutil.rmtree(built, ignore_errors=True)
        raise ValueError(f"{target} is not a Data Docs directory (no index.html): not replacing it")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(built, target)
    shutil.rmtree(old, ignore_errors=True)


def _label(group: list[str]) -> str:
    return "_".join(group) if len(group) <= 4 else f"{group[0]}_to_{group[-1]}_{len(group)}_sites"


def _result(suite: SuiteSpec, spec: ExpectationSpec, site: str | None, result: ExpectationValidationResult,
            frame: pd.DataFrame) -> ExpectationResult:
    return ExpectationResult(suite.name, spec.id, spec.table, site, bool(result.success),
                             observed(result, frame, suite.key, spec), spec.description, spec.severity)


def observed(result: ExpectationValidationResult, frame: pd.DataFrame, key: tuple[str, ...],
             spec: ExpectationSpec) -> str:
    """What was seen, as the validation report counts it: violated of denominator (percentage),
    then up to `EXAMPLES` of the rows that break the rule, named by their key."""
    info = result.exception_info or {}
    if info.get("raised_exception"):
        return f"could not be evaluated: {info.get('exception_message')}"
    r = result.result or {}
    if "unexpected_count" not in r:
        return f"observed {r.get('observed_value')}"
    count, total = r["unexpected_count"], r.get("element_count") or 0
    text = f"{count} of {total} unexpected" + (f" ({100 * count / total:.2f}%)" if total else "")
    examples = [_describe_row(frame, i, key, spec) for i in r.get("partial_unexpected_index_list") or []]
    return text + ("; e.g. " + "; ".join(examples) if count and examples else "")


def _describe_row(frame: pd.DataFrame, index: Any, key: tuple[str, ...], spec: ExpectationSpec) -> str:
    row = frame.loc[index]
    name = "/".join(str(row[c]) for c in key if c in frame.columns)
    values = ", ".join(f"{c}={_text(row[c])}" for c in spec.value_columns if c not in key and c in frame.columns)
    return f"{name}: {values}" if name and values else name or values


def _text(value: Any) -> str:
    """A cell as a data manager reads it: missing, 10 (not 10.0), 2026-03-01 (not a timestamp)."""
    import pandas as pd

    if value is None or (not isinstance(value, str | list | tuple) and bool(pd.isna(value))):
        return "missing"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, pd.Timestamp) and value == value.normalize():
        return value.date().isoformat()
    return str(value)


# ---------------------------------------------------------------------------------------------
# The stage


def run_expectations(con: duckdb.DuckDBPyConnection, docs_dir: Path | None,
                     sites: set[str] | None = None) -> ExpectationReport:
    """Every suite of schemas/expectations.yaml on the warehouse of `con`, for `sites` (None: all
    sites), with Data Docs written to `docs_dir` (None: none). Only reads the warehouse.

    A suite that cannot be evaluated (a query or column gone) is reported as failed with the
    reason, for each of its expectations and sites: the report is never lost to an exception.
    """
    started = time.perf_counter()
    checked_at = datetime.now(UTC)
    suites = load_suites()
    scope = sites_in_scope(con, sites)
    if not scope:
        return ExpectationReport([], None, time.perf_counter() - started, checked_at, scope)
    validation = _Validation(suites, checked_at)
    results: list[ExpectationResult] = []
    for suite in suites:
        results += _validate_suite(con, validation, suite, scope)
    docs_index = validation.build_docs(docs_dir) if docs_dir is not None else None
    return ExpectationReport(results, docs_index, time.perf_counter() - started, checked_at, scope)


def _validate_suite(con: duckdb.DuckDBPyConnection, validation: _Validation, suite: SuiteSpec,
                    scope: list[str]) -> list[ExpectationResult]:
    results: list[ExpectationResult] = []
    group = scope
    try:
        if suite.table is not None:
            for group, frame in table_batches(con, suite, scope):
                results += validation.validate(suite, group, frame)
                del frame  # before the next batch is fetched: one batch in memory at a time
        else:
            assert suite.query is not None
            frame = fetch_frame(con, suite.query, query_parameters(suite, scope))
            if "site_id" not in frame.columns:
                raise ValueError(f"the query of suite {suite.name} has no site_id column")
            results += validation.validate(suite, scope, frame)
    except Exception as exc:  # reported, never raised: expectations must not stop a landing
        done = {(r.expectation, r.site_id) for r in results}
        results += [ExpectationResult(suite.name, e.id, e.table, site, False,
                                      f"could not be evaluated: {type(exc).__name__}: {exc}", e.description,
                                      e.severity)
                    for site in group for e in suite.expectations if (e.id, site) not in done]
    return results


def record_expectations(con: duckdb.DuckDBPyConnection, run_id: str, report: ExpectationReport) -> None:
    """The report's results into `ops.expectations`, one row per expectation and site; recording
    the same run again replaces its rows."""
    con.execute(OPS_EXPECTATIONS_DDL)
    rows = pa.table({
        "run_id": pa.array([run_id] * report.evaluated, pa.string()),
        "suite": pa.array([r.suite for r in report.results], pa.string()),
        "expectation": pa.array([r.expectation for r in report.results], pa.string()),
        "table_name": pa.array([r.table for r in report.results], pa.string()),
        "site_id": pa.array([r.site_id for r in report.results], pa.string()),
        "success": pa.array([r.success for r in report.results], pa.bool_()),
        "observed": pa.array([r.observed for r in report.results], pa.string()),
        "description": pa.array([r.description for r in report.results], pa.string()),
        "severity": pa.array([r.severity for r in report.results], pa.string()),
        "checked_at": pa.array([report.checked_at] * report.evaluated, pa.timestamp("us", tz="UTC")),
    })
    con.execute("delete from ops.expectations where run_id = ?", [run_id])
    con.register("expectation_results", rows)
    try:
        con.execute("insert into ops.expectations by name select * from expectation_results")
    finally:
        con.unregister("expectation_results")
