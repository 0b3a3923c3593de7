"""The pandera (polars) models of the datasets in `schemas/datasets.py`, one per dataset, every
field described.

Every check's `name` starts with the DTS §6 reason code it raises, so validation failures turn
into quarantine records without a lookup table. Built-in range and code checks carry no name
of their own and mean `OUT_OF_RANGE`; `not_nullable` means `MISSING_REQUIRED`. A dataframe
check is named `<REASON>:<column>`, the column the data manager is pointed at.

The pipeline runs these rules as DuckDB SQL compiled from the models (`flows/validate.py`): a
built-in check from its name and statistics, a dataframe check from the SQL twin it carries in
`statistics["sql"]` (a boolean, true where the record passes, never null). The tests hold the
SQL to pandera's verdict on every rule.
"""

from __future__ import annotations

import pandera.polars as pa
import polars as pl

from schemas.datasets import ASSESSMENT_VISITS, DOSING_VISITS, SESSION_VISITS, instruments

YN = ["Y", "N"]
# [0-9], not \d: a Unicode digit (Arabic-Indic, full-width) is no digit of the DTS, and every
# engine that runs these patterns (polars, DuckDB) must read them alike.
SUBJECT_PATTERN = r"^S[0-9]{2}-[0-9]{4}$"
# A column whose value checks mean "a visit or item the dataset does not have" (DTS §6).
INVALID_VISIT = {"reason": "INVALID_VISIT"}


def _valid_instrument_rows(frame: pl.LazyFrame, rule: pl.Expr) -> pl.LazyFrame:
    """`rule` evaluated per row, passing rows whose instrument or operands are unknown (other
    checks already quarantine those, and a record gets one reason)."""
    return frame.select(rule.fill_null(True))


def _instrument_lookup(attribute: str) -> pl.Expr:
    mapping = {name: spec[attribute] for name, spec in instruments().items()}
    return pl.col("instrument").replace_strict(mapping, default=None, return_dtype=pl.Int64)


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_codes(values: list[str]) -> str:
    return "(" + ", ".join(_sql_text(v) for v in values) + ")"


def _instrument_case_sql(then: dict[str, str]) -> str:
    """`case instrument when <name> then <sql> … end`: null for an unknown instrument, like
    `_instrument_lookup`."""
    return "case instrument " + " ".join(f"when {_sql_text(i)} then {sql}" for i, sql in then.items()) + " end"


def _instrument_lookup_sql(attribute: str) -> str:
    return _instrument_case_sql({name: str(int(spec[attribute])) for name, spec in instruments().items()})


def _dosing_value_present_sql(column: str) -> str:
    return f"coalesce(not (visit in {_sql_codes(DOSING_VISITS)} and attended = 'Y'), true) or {column} is not null"


def _present_when_sql(column: str, condition: str, value: str) -> str:
    return f"coalesce({condition} <> {_sql_text(value)}, true) or {column} is not null"


class Participants(pa.DataFrameModel):
    """One row per screened person (DTS §3 participants). Key: subject_id."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="Site prefix and 4 digits, e.g. S02-0017.")
    screening_date: pl.Date = pa.Field(description="Date of the screening visit.")
    consent_date: pl.Date = pa.Field(description="Date informed consent was signed; on or before screening.")
    birth_year: int = pa.Field(in_range={"min_value": 1900, "max_value": 2010},
                               description="Year of birth (hard limit 1900–2010).")
    sex: str = pa.Field(isin=["F", "M", "X"], description="F, M or X.")
    weight_kg: float = pa.Field(in_range={"min_value": 30, "max_value": 250},
                                description="Weight at screening in kg (delivered weight_lb converted).")
    prior_ect: str = pa.Field(isin=YN, description="Prior electroconvulsive therapy (stratification factor).")
    status: str = pa.Field(isin=["SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED", "WITHDRAWN"],
                           description="Participant status.")
    withdrawal_date: pl.Date = pa.Field(nullable=True, description="Date of withdrawal (if WITHDRAWN).")
    withdrawal_reason: str = pa.Field(nullable=True, description="Reason for withdrawal (if WITHDRAWN).")

    @pa.dataframe_check(name="INCONSISTENT:consent_date", description="consent_date on or before screening_date",
                        statistics={"sql": "coalesce(consent_date <= screening_date, true)"})
    def consent_on_or_before_screening(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("consent_date") <= pl.col("screening_date")).fill_null(True))

    @pa.dataframe_check(name="MISSING_REQUIRED:withdrawal_date", description="withdrawal_date when WITHDRAWN",
                        statistics={"sql": _present_when_sql("withdrawal_date", "status", "WITHDRAWN")})
    def withdrawal_date_when_withdrawn(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_present_when("withdrawal_date", "status", "WITHDRAWN"))

    @pa.dataframe_check(name="MISSING_REQUIRED:withdrawal_reason", description="withdrawal_reason when WITHDRAWN",
                        statistics={"sql": _present_when_sql("withdrawal_reason", "status", "WITHDRAWN")})
    def withdrawal_reason_when_withdrawn(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_present_when("withdrawal_reason", "status", "WITHDRAWN"))

    class Config:
        strict = False


class Sessions(pa.DataFrameModel):
    """Therapy and dosing sessions (DTS §3 sessions). Key: subject_id, visit."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="A known participant.")
    visit: str = pa.Field(isin=SESSION_VISITS, metadata=INVALID_VISIT, description="PREP1, PREP2, D1–D6, INT1–INT6.")
    session_date: pl.Date = pa.Field(description="Date of the session.")
    start_time: pl.Time = pa.Field(description="Local start time HH:MM.")
    duration_min: int = pa.Field(in_range={"min_value": 5, "max_value": 600}, description="Minutes (5–600).")
    therapist_id: str = pa.Field(str_matches=r"^T[0-9]{3}$", description="Therapist code T + 3 digits.")
    attended: str = pa.Field(isin=YN, description="Whether the participant attended.")
    route: str = pa.Field(nullable=True, isin=["IV", "IM", "SL", "IN"], description="Route (dosing only).")
    dose_mg: float = pa.Field(nullable=True, gt=0, le=800, description="Blinded planned dose in mg (dosing only).")
    weight_kg: float = pa.Field(nullable=True, in_range={"min_value": 30, "max_value": 250},
                                description="Weight at the dosing session in kg (dosing only).")
    infusion_min: int = pa.Field(nullable=True, in_range={"min_value": 1, "max_value": 240},
                                 description="Infusion minutes (IV only).")

    @pa.dataframe_check(name="MISSING_REQUIRED:route", description="route at an attended dosing visit",
                        statistics={"sql": _dosing_value_present_sql("route")})
    def route_at_dosing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_dosing_value_present("route"))

    @pa.dataframe_check(name="MISSING_REQUIRED:dose_mg", description="dose_mg at an attended dosing visit",
                        statistics={"sql": _dosing_value_present_sql("dose_mg")})
    def dose_at_dosing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_dosing_value_present("dose_mg"))

    @pa.dataframe_check(name="MISSING_REQUIRED:weight_kg", description="weight_kg at an attended dosing visit",
                        statistics={"sql": _dosing_value_present_sql("weight_kg")})
    def weight_at_dosing(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_dosing_value_present("weight_kg"))

    @pa.dataframe_check(name="MISSING_REQUIRED:infusion_min", description="infusion_min for IV dosing",
                        statistics={"sql": _present_when_sql("infusion_min", "route", "IV")})
    def infusion_when_iv(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(_present_when("infusion_min", "route", "IV"))

    class Config:
        strict = False


def _dosing_value_present(column: str) -> pl.Expr:
    """Dosing fields are required at an attended dosing visit: a missed session has no dose."""
    at_dosing = pl.col("visit").is_in(DOSING_VISITS) & (pl.col("attended") == "Y")
    return (~at_dosing).fill_null(True) | pl.col(column).is_not_null()


def _present_when(column: str, condition: str, value: str) -> pl.Expr:
    """`column` is required on a record whose `condition` column holds `value`."""
    return (pl.col(condition) != value).fill_null(True) | pl.col(column).is_not_null()


class Vitals(pa.DataFrameModel):
    """Vital signs at dosing sessions (DTS §3 vitals). Key: subject_id, visit, timepoint."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="A known participant.")
    visit: str = pa.Field(isin=DOSING_VISITS, metadata=INVALID_VISIT, description="Dosing visit D1–D6.")
    timepoint: str = pa.Field(isin=["PRE", "T40", "T120"], description="Before, 40 and 120 minutes into dosing.")
    measured_time: pl.Time = pa.Field(description="Local time HH:MM.")
    sbp: int = pa.Field(in_range={"min_value": 50, "max_value": 300}, description="Systolic BP mmHg (50–300).")
    dbp: int = pa.Field(in_range={"min_value": 20, "max_value": 200}, description="Diastolic BP mmHg (20–200).")
    hr: int = pa.Field(in_range={"min_value": 20, "max_value": 250}, description="Heart rate bpm (20–250).")
    spo2: int = pa.Field(in_range={"min_value": 50, "max_value": 100}, description="Oxygen saturation % (50–100).")

    @pa.dataframe_check(name="INCONSISTENT:dbp", description="dbp below sbp",
                        statistics={"sql": "coalesce(dbp < sbp, true)"})
    def dbp_below_sbp(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("dbp") < pl.col("sbp")).fill_null(True))

    class Config:
        strict = False


class AssessmentItems(pa.DataFrameModel):
    """Item-level scores in long format (DTS §3 assessments). Key: subject_id, visit, instrument, item."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="A known participant.")
    visit: str = pa.Field(isin=ASSESSMENT_VISITS, metadata=INVALID_VISIT,
                          description="Assessment visit of the schedule.")
    instrument: str = pa.Field(isin=list(instruments()), description="MADRS, PHQ9, GAD7, CADSS or CSSRS.")
    assessment_date: pl.Date = pa.Field(description="Date the instrument was administered.")
    rater_id: str = pa.Field(nullable=True, str_matches=r"^R[0-9]{3}$", description="Rater code (MADRS only).")
    item: int = pa.Field(description="Item number within the instrument.")
    score: int = pa.Field(description="Item score, within the instrument's item range.")

    @pa.dataframe_check(name="MISSING_REQUIRED:rater_id", description="rater_id for MADRS",
                        statistics={"sql": f"coalesce({_instrument_lookup_sql('rater_required')} <> 1, true) "
                                           "or rater_id is not null"})
    def rater_for_madrs(cls, data: pa.PolarsData) -> pl.LazyFrame:
        required = _instrument_lookup("rater_required") == 1
        return data.lazyframe.select((~required).fill_null(True) | pl.col("rater_id").is_not_null())

    @pa.dataframe_check(name="OUT_OF_RANGE:score", description="score within the instrument's item range",
                        statistics={"sql": f"coalesce(score between {_instrument_lookup_sql('item_min')} "
                                           f"and {_instrument_lookup_sql('item_max')}, true)"})
    def score_in_item_range(cls, data: pa.PolarsData) -> pl.LazyFrame:
        rule = pl.col("score").is_between(_instrument_lookup("item_min"), _instrument_lookup("item_max"))
        return _valid_instrument_rows(data.lazyframe, rule)

    @pa.dataframe_check(name="INVALID_VISIT:item", description="an item number the instrument has",
                        statistics={"sql": f"coalesce(item between 1 and {_instrument_lookup_sql('items')}, true)"})
    def item_of_instrument(cls, data: pa.PolarsData) -> pl.LazyFrame:
        rule = pl.col("item").is_between(1, _instrument_lookup("items"))
        return _valid_instrument_rows(data.lazyframe, rule)

    @pa.dataframe_check(name="INVALID_VISIT:visit", description="the instrument is taken at this visit",
                        statistics={"sql": "coalesce(" + _instrument_case_sql(
                            {name: f"visit in {_sql_codes(spec['visits'])}" for name, spec in instruments().items()})
                                           + ", true)"})
    def instrument_taken_at_visit(cls, data: pa.PolarsData) -> pl.LazyFrame:
        allowed = pl.lit(None, dtype=pl.Boolean)
        for name, spec in instruments().items():
            allowed = pl.when(pl.col("instrument") == name).then(pl.col("visit").is_in(spec["visits"])).otherwise(
                allowed)
        return _valid_instrument_rows(data.lazyframe, allowed)

    class Config:
        strict = False


class AdverseEvents(pa.DataFrameModel):
    """Adverse events (DTS §3 adverse_events). Key: subject_id, ae_id."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="A known participant.")
    ae_id: str = pa.Field(description="The site's id of the event, unique per subject.")
    term: str = pa.Field(description="Verbatim term as reported.")
    onset_date: pl.Date = pa.Field(description="Onset date.")
    end_date: pl.Date = pa.Field(nullable=True, description="End date, on or after onset (optional).")
    severity: str = pa.Field(isin=["MILD", "MODERATE", "SEVERE"], description="MILD, MODERATE, SEVERE.")
    serious: str = pa.Field(isin=YN, description="Serious adverse event.")
    related: str = pa.Field(isin=["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"],
                            description="Relatedness to study treatment.")
    outcome: str = pa.Field(
        isin=["RECOVERED", "RECOVERING", "NOT_RECOVERED", "RECOVERED_WITH_SEQUELAE", "FATAL", "UNKNOWN"],
        description="Outcome.")
    action: str = pa.Field(isin=["NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN"],
                           description="Action taken with study treatment.")

    @pa.dataframe_check(name="INCONSISTENT:end_date", description="end_date on or after onset_date",
                        statistics={"sql": "coalesce(end_date >= onset_date, true)"})
    def end_on_or_after_onset(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select((pl.col("end_date") >= pl.col("onset_date")).fill_null(True))

    class Config:
        strict = False


class Randomization(pa.DataFrameModel):
    """The IWRS randomization list (DTS §5): the only unblinded data. Key: subject_id."""

    subject_id: str = pa.Field(str_matches=SUBJECT_PATTERN, description="The randomized participant.")
    site_id: str = pa.Field(str_matches=r"^S[0-9]{2}$", description="The participant's site.")
    arm: str = pa.Field(isin=["KAP", "KET", "ACP"], description="Allocated arm: KAP, KET or ACP.")
    randomized_on: pl.Date = pa.Field(description="Date of randomization.")
    stratum: str = pa.Field(isin=["ECT", "NO_ECT"], description="Stratum: prior ECT or not.")

    @pa.dataframe_check(name="INCONSISTENT:site_id", description="site_id is the subject's site",
                        statistics={"sql": "coalesce(split_part(subject_id, '-', 1) = site_id, true)"})
    def site_is_the_subjects_prefix(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("subject_id").str.split("-").list.first() == pl.col("site_id")).fill_null(True))

    class Config:
        strict = False
