"""The trial report: one self-contained HTML file of plots and tables, blinded unless asked.

`build_report(con, unblinded)` reads what it needs from the warehouse (`load_report_data`, the
only function that queries) and renders it (`render_report`, pure: data in, HTML out). The file
works offline and opens anywhere: no script, no stylesheet, font or image from elsewhere; every
plot is an SVG drawn by matplotlib (Agg, no pyplot state) and written inline.

The blind: the blinded report never reads `unblinded.*`, and `render_report` refuses data that
carries arms unless the report is the unblinded one.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Figures here never touch pyplot; should anything in the process import it, no display is tried.
matplotlib.use("Agg")

Z95 = 1.959964  # two-sided 95 % normal quantile: error bars are mean ± Z95 · SD / √n
DOSING = ("D1", "D2", "D3", "D4", "D5", "D6")
TIMEPOINTS = ("PRE", "T40", "T120")
TIMEPOINT_COLOURS = {"PRE": "#4C72B0", "T40": "#C44E52", "T120": "#55A868"}
ARM_COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
RCPARAMS = {
    # text as <text> elements: smaller, searchable, and no glyph outlines to embed
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


@dataclass(frozen=True)
class Summary:
    """Mean, SD and count of a measure at one point (visit, session, timepoint)."""

    n: int
    mean: float | None
    sd: float | None

    @property
    def ci95(self) -> float:
        """Half-width of the 95 % confidence interval of the mean (normal approximation); 0 when n < 2."""
        if self.n < 2 or self.sd is None or math.isnan(self.sd):
            return 0.0
        return Z95 * self.sd / math.sqrt(self.n)


@dataclass(frozen=True)
class Table:
    """A table as it is shown: headers and rows of display values."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass
class ReportData:
    """Everything the report shows, read from the warehouse by `load_report_data`."""

    generated_at: datetime
    unblinded: bool
    last_run: tuple[str, datetime | None] | None = None
    visits: list[str] = field(default_factory=list)  # schedule order
    randomized: list[tuple[str, date]] = field(default_factory=list)  # (site, bl_date)
    enrollment: Table | None = None
    madrs: dict[str, Summary] = field(default_factory=dict)
    madrs_outcomes: dict[str, tuple[Summary, int, int]] = field(default_factory=dict)  # change, responders, remitters
    cadss: dict[str, Summary] = field(default_factory=dict)
    bp: dict[tuple[str, str, str], Summary] = field(default_factory=dict)  # (measure, visit, timepoint)
    bp_pooled: dict[tuple[str, str], tuple[Summary, int | None]] = field(default_factory=dict)  # (measure, tp) → max
    quality: Table | None = None
    checks: Table | None = None
    arms: list[str] = field(default_factory=list)
    efficacy: list[dict[str, Any]] = field(default_factory=list)  # unblinded.efficacy_by_arm rows
    change_sd: dict[tuple[str, str], float | None] = field(default_factory=dict)  # (arm, visit) → SD of change


# ---------------------------------------------------------------------------------------------------------------
# the edge: queries


def build_report(con: duckdb.DuckDBPyConnection, unblinded: bool) -> str:
    """The report as one HTML document; with `unblinded`, `con` must have the `unblinded` catalog attached
    (`flows.warehouse.connect_unblinded`)."""
    return render_report(load_report_data(con, unblinded))


def _exists(con: duckdb.DuckDBPyConnection, schema: str, table: str, catalog: str | None = None) -> bool:
    query = "select count(*) from duckdb_tables() where schema_name = ? and table_name = ?"
    params: list[Any] = [schema, table]
    if catalog:
        query += " and database_name = ?"
        params.append(catalog)
    # fetchall, not fetchone: a result left half-read blocks the next query on `con`
    ((count,),) = con.execute(query, params).fetchall()
    return bool(count)


def _table(con: duckdb.DuckDBPyConnection, query: str) -> Table:
    cursor = con.execute(query)
    return Table([d[0] for d in cursor.description or []], [list(r) for r in cursor.fetchall()])


def _summaries(rows: Iterable[Sequence[Any]]) -> dict[Any, Summary]:
    """(key…, n, mean, sd) rows as summaries keyed by the leading column(s)."""
    out: dict[Any, Summary] = {}
    for *key, n, mean, sd in rows:
        out[key[0] if len(key) == 1 else tuple(key)] = Summary(int(n), mean, sd)
    return out


def load_report_data(con: duckdb.DuckDBPyConnection, unblinded: bool,
                     generated_at: datetime | None = None) -> ReportData:
    """Read the report's data. Blinded, nothing of the `unblinded` catalog is touched."""
    data = ReportData(generated_at=generated_at or datetime.now(UTC), unblinded=unblinded)
    runs = con.execute("select run_id, finished_at from ops.runs order by started_at desc limit 1").fetchall()
    data.last_run = (runs[0][0], runs[0][1]) if runs else None
    data.visits = [v for (v,) in con.execute("select visit from ref.visits order by rowid").fetchall()]
    data.randomized = [(s, d) for s, d in con.execute(
        "select site_id, bl_date from core.participants where bl_date is not null order by bl_date, site_id"
    ).fetchall()]
    if _exists(con, "marts", "enrollment"):
        data.enrollment = _table(con, "select * from marts.enrollment order by site_id")
    # endpoint assessments as marts.madrs_outcomes counts them: complete, form not marked incomplete
    data.madrs = _summaries(con.execute("""
        select visit, count(*), avg(total), stddev_samp(total) from core.assessments
        where instrument = 'MADRS' and is_complete and coalesce(form_status, '') <> 'INCOMPLETE'
        group by all""").fetchall())
    if _exists(con, "marts", "madrs_outcomes"):
        for visit, n, mean, sd, responders, remitters in con.execute("""
                select visit, count(change), avg(change), stddev_samp(change),
                    count(*) filter (where response), count(*) filter (where remission)
                from marts.madrs_outcomes group by all""").fetchall():
            data.madrs_outcomes[visit] = (Summary(int(n), mean, sd), int(responders), int(remitters))
    data.cadss = _summaries(con.execute("""
        select visit, count(total), avg(total), stddev_samp(total) from core.assessments
        where instrument = 'CADSS' and total is not null group by all""").fetchall())
    for measure in ("sbp", "dbp"):
        for (visit, timepoint), summary in _summaries(con.execute(f"""
                select visit, timepoint, count({measure}), avg({measure}), stddev_samp({measure})
                from core.vitals where {measure} is not null group by all""").fetchall()).items():
            data.bp[(measure, visit, timepoint)] = summary
        for timepoint, n, mean, sd, highest in con.execute(f"""
                select timepoint, count({measure}), avg({measure}), stddev_samp({measure}), max({measure})
                from core.vitals where {measure} is not null and list_contains({list(DOSING)}, visit)
                group by all""").fetchall():
            data.bp_pooled[(measure, timepoint)] = (Summary(int(n), mean, sd), highest)
    if _exists(con, "marts", "data_quality"):
        data.quality = _table(con, "select * from marts.data_quality where dataset <> 'randomization'")
    if _exists(con, "marts", "data_quality_checks"):
        data.checks = _table(con, """
            select site_id,
                count(*) as checks,
                count(*) filter (where not passed) as failed,
                count(*) filter (where not passed and severity = 'error') as failed_error,
                count(*) filter (where not passed and severity = 'warning') as failed_warning,
                count(*) filter (where not passed and severity = 'safety') as failed_safety,
            from marts.data_quality_checks
            where dataset <> 'randomization'
            group by all order by site_id""")
    if unblinded:
        if not _exists(con, "main", "efficacy_by_arm", catalog="unblinded"):
            raise LookupError("the unblinded store holds no efficacy_by_arm yet: ingest a randomization list first")
        cursor = con.execute("select * from unblinded.efficacy_by_arm")
        names = [d[0] for d in cursor.description or []]
        data.efficacy = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        data.arms = sorted({str(r["arm"]) for r in data.efficacy})
        if _exists(con, "main", "randomization", catalog="unblinded") and _exists(con, "marts", "madrs_outcomes"):
            data.change_sd = {(arm, visit): sd for arm, visit, sd in con.execute("""
                select randomization.arm, outcomes.visit, stddev_samp(outcomes.change)
                from marts.madrs_outcomes as outcomes
                join unblinded.randomization as randomization using (subject_id)
                group by all""").fetchall()}
    return data


# ---------------------------------------------------------------------------------------------------------------
# plots: figures in, inline SVG out


def svg(fig: Figure, key: str) -> str:
    """The figure as an `<svg>` element to write inline in HTML.

    Every id gets the plot's key as prefix, so ids stay unique across the plots of one page; the
    XML prolog, DOCTYPE (a DTD address), metadata and namespace declarations go (the HTML parser
    puts `<svg>` in the SVG namespace itself), so the page names no address at all.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({**RCPARAMS, "svg.hashsalt": key}):
        fig.savefig(buffer, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', text)
    text = re.sub(r'xlink:href="#([^"]+)"', rf'href="#{key}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{key}-\1)", text)
    # the viewBox scales the plot; width and height in pt would pin it
    text = re.sub(r'^<svg width="[^"]*" height="[^"]*"', f'<svg role="img" aria-label="{key}"', text)
    return text


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    with matplotlib.rc_context(RCPARAMS):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _with_n(labels: Sequence[str], ns: Sequence[int]) -> list[str]:
    return [f"{label}\nn={n}" for label, n in zip(labels, ns, strict=True)]


def _errorbar(ax: Axes, xs: Sequence[float], points: Sequence[Summary], **style: Any) -> None:
    shown = [(x, p) for x, p in zip(xs, points, strict=True) if p.mean is not None]
    if shown:
        ax.errorbar([x for x, _ in shown], [p.mean for _, p in shown], yerr=[p.ci95 for _, p in shown],
                    capsize=3, marker="o", markersize=4, **style)


def plot_enrollment(randomized: Sequence[tuple[str, date]]) -> Figure:
    """Cumulative randomized participants (a BL visit) by BL date, per site and in all."""
    fig, (ax,) = _figure(8, 3.6)
    sites = sorted({s for s, _ in randomized})
    with matplotlib.rc_context(RCPARAMS):
        for site in sites:
            days = [d for s, d in randomized if s == site]
            ax.step(days, range(1, len(days) + 1), where="post", label=site, linewidth=1.2)
        if randomized:
            days = [d for _, d in randomized]
            ax.step(days, range(1, len(days) + 1), where="post", label="all sites", color="black", linestyle="--")
        ax.set_ylabel("randomized (cumulative)")
        ax.set_xlabel("date of BL visit")
        ax.set_title("Enrollment over time")
        if 0 < len(sites) <= 12:
            ax.legend(fontsize=7, ncols=2, loc="upper left")
        fig.autofmt_xdate()
    return fig


def plot_by_visit(points: dict[str, Summary], visits: Sequence[str], title: str, ylabel: str) -> Figure:
    """Mean ± 95 % CI of a total at each visit, n under the visit."""
    shown = [v for v in visits if v in points]
    fig, (ax,) = _figure(8, 3.4)
    with matplotlib.rc_context(RCPARAMS):
        _errorbar(ax, range(len(shown)), [points[v] for v in shown], color="#4C72B0")
        ax.set_xticks(range(len(shown)), _with_n(shown, [points[v].n for v in shown]))
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    return fig


def plot_bp(bp: dict[tuple[str, str, str], Summary]) -> Figure:
    """SBP and DBP at each dosing session, one line per timepoint."""
    fig, axes = _figure(9, 3.4, ncols=2)
    with matplotlib.rc_context(RCPARAMS):
        for ax, measure, name in zip(axes, ("sbp", "dbp"), ("Systolic", "Diastolic"), strict=True):
            for offset, timepoint in zip((-0.15, 0.0, 0.15), TIMEPOINTS, strict=True):
                points = [bp.get((measure, v, timepoint), Summary(0, None, None)) for v in DOSING]
                _errorbar(ax, [i + offset for i in range(len(DOSING))], points, label=timepoint,
                          color=TIMEPOINT_COLOURS[timepoint])
            ax.set_xticks(range(len(DOSING)), DOSING)
            ax.set_title(f"{name} BP by dosing session")
            ax.set_ylabel("mmHg")
        if axes[0].get_legend_handles_labels()[0]:
            axes[0].legend(fontsize=7, title="timepoint", title_fontsize=7)
    return fig


def _column(table: Table, name: str) -> list[Any]:
    i = table.columns.index(name)
    return [row[i] for row in table.rows]


def quality_by_site(quality: Table) -> Table:
    """marts.data_quality summed over datasets: one row per site."""
    measures = [c for c in ("delivered", "landed", "quarantined", "duplicates_collapsed", "open_flags",
                            "violations_conformance", "violations_completeness", "violations_plausibility")
                if c in quality.columns]
    sums: dict[str, list[int]] = {}
    for site, *values in zip(_column(quality, "site_id"), *(_column(quality, m) for m in measures), strict=True):
        total = sums.setdefault(site, [0] * len(measures))
        for i, value in enumerate(values):
            total[i] += int(value or 0)
    rows = []
    for site in sorted(sums):
        values = dict(zip(measures, sums[site], strict=True))
        share = 100.0 * values.get("quarantined", 0) / values["delivered"] if values.get("delivered") else None
        rows.append([site, *sums[site], share])
    return Table(["site_id", *measures, "pct_quarantined"], rows)


def plot_quality(by_site: Table) -> Figure:
    """Delivered rows by what became of them, and open flags, per site."""
    sites = _column(by_site, "site_id")
    fig, (left, right) = _figure(9, max(2.2, 0.8 + 0.28 * len(sites)), ncols=2)
    with matplotlib.rc_context(RCPARAMS):
        ys = range(len(sites))
        start = [0.0] * len(sites)
        for name, colour in (("landed", "#55A868"), ("quarantined", "#C44E52"), ("duplicates_collapsed", "#8172B2")):
            if name not in by_site.columns:
                continue
            values = [int(v or 0) for v in _column(by_site, name)]
            left.barh(ys, values, left=start, color=colour, label=name.replace("_", " "))
            start = [a + b for a, b in zip(start, values, strict=True)]
        left.set_yticks(ys, sites)
        left.invert_yaxis()
        left.set_title("Delivered rows of the current transfer")
        # below the bars: inside the axes it hides the shortest ones
        left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=3, frameon=False)
        if "open_flags" in by_site.columns:
            right.barh(ys, [int(v or 0) for v in _column(by_site, "open_flags")], color="#DD8452")
        right.set_yticks(ys, sites)
        right.invert_yaxis()
        right.set_title("Open flags")
    return fig


def plot_arm_change(efficacy: Sequence[dict[str, Any]], arms: Sequence[str], visits: Sequence[str],
                    change_sd: dict[tuple[str, str], float | None]) -> Figure:
    """MADRS mean change from BL by arm and visit, ± 95 % CI where the SD is known."""
    shown = [v for v in visits if any(r["visit"] == v for r in efficacy)]
    fig, (ax,) = _figure(8, 3.6)
    with matplotlib.rc_context(RCPARAMS):
        width = 0.3 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            rows = {r["visit"]: r for r in efficacy if r["arm"] == arm}
            points = [Summary(int(rows[v]["n"]), rows[v]["mean_change"], change_sd.get((arm, v)))
                      if v in rows else Summary(0, None, None) for v in shown]
            _errorbar(ax, [x + (i - (len(arms) - 1) / 2) * width for x in range(len(shown))], points,
                      label=arm, color=ARM_COLOURS[i % len(ARM_COLOURS)])
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(shown)), shown)
        ax.set_title("MADRS mean change from BL by arm")
        ax.set_ylabel("change in MADRS total")
        ax.legend(fontsize=7, title="arm", title_fontsize=7)
    return fig


def plot_arm_rates(efficacy: Sequence[dict[str, Any]], arms: Sequence[str], visits: Sequence[str]) -> Figure:
    """Responders and remitters by arm and visit, as % of the arm's participants assessed at the visit."""
    shown = [v for v in visits if any(r["visit"] == v for r in efficacy)]
    fig, axes = _figure(9, 3.4, ncols=2)
    with matplotlib.rc_context(RCPARAMS):
        for ax, measure in zip(axes, ("responders", "remitters"), strict=True):
            for i, arm in enumerate(arms):
                rows = {r["visit"]: r for r in efficacy if r["arm"] == arm}
                xs = [x for x, v in enumerate(shown) if v in rows and rows[v]["n"]]
                ax.plot(xs, [100.0 * rows[shown[x]][measure] / rows[shown[x]]["n"] for x in xs], marker="o",
                        markersize=4, label=arm, color=ARM_COLOURS[i % len(ARM_COLOURS)])
            ax.set_xticks(range(len(shown)), shown)
            ax.set_ylim(0, 100)
            ax.set_ylabel("% of assessed")
            ax.set_title(f"MADRS {measure} by arm")
        axes[0].legend(fontsize=7, title="arm", title_fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; }
.banner { padding: 0.6em 1em; border-radius: 4px; margin: 1em 0; }
.blinded { background: #e8f1fb; border: 1px solid #9cc3ea; }
.unblinded { background: #fdecea; border: 2px solid #d9534f; font-weight: bold; }
figure { margin: 1em 0; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:,.1f}</td>' if not math.isnan(value) else "<td></td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_html(fig: Figure, key: str, caption: str) -> str:
    return f"<figure>{svg(fig, key)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _fmt(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)


def _pct(part: int, whole: int) -> str:
    return f"{part} ({100.0 * part / whole:.0f} %)" if whole else str(part)


def render_report(data: ReportData) -> str:
    """The report as HTML: pure, every value from `data`."""
    if data.arms and not data.unblinded:
        raise ValueError("a blinded report was given data by arm")
    sections: list[str] = []

    sections.append("<h2>Enrollment</h2>")
    sections.append(_figure_html(plot_enrollment(data.randomized), "enrollment",
                                 "Participants randomized (with a BL visit), cumulative by the date of BL, per site; "
                                 "dashed: all sites."))
    if data.enrollment:
        sections.append(html_table(data.enrollment))

    sections.append("<h2>Depression: MADRS, all participants pooled</h2>")
    sections.append(_figure_html(plot_by_visit(data.madrs, data.visits, "MADRS total by visit (pooled, blinded)",
                                               "MADRS total"), "madrs",
                                 "Mean MADRS total ± 95 % CI (normal approximation) of complete assessments; "
                                 "n = assessments at the visit."))
    rows = []
    for visit in (v for v in data.visits if v in data.madrs):
        total = data.madrs[visit]
        change, responders, remitters = data.madrs_outcomes.get(visit, (None, None, None))
        rows.append([visit, total.n, _fmt(total.mean), _fmt(total.sd),
                     change.n if change else None, _fmt(change.mean) if change else None,
                     _pct(responders, change.n) if change else None, _pct(remitters, change.n) if change else None])
    sections.append(html_table(Table(["visit", "n", "mean total", "SD", "n with BL", "mean change from BL",
                                      "responders", "remitters"], rows)))

    sections.append("<h2>Dissociation: CADSS by dosing session</h2>")
    sections.append(_figure_html(plot_by_visit(data.cadss, DOSING, "CADSS total by dosing session", "CADSS total"),
                                 "cadss", "Mean CADSS total ± 95 % CI of complete assessments."))
    sections.append(html_table(Table(["session", "n", "mean total", "SD"], [
        [v, data.cadss[v].n, _fmt(data.cadss[v].mean), _fmt(data.cadss[v].sd)] for v in DOSING if v in data.cadss])))

    sections.append("<h2>Blood pressure at dosing sessions</h2>")
    sections.append(_figure_html(plot_bp(data.bp), "bp",
                                 "Mean SBP and DBP ± 95 % CI before dosing (PRE), at 40 and at 120 minutes."))
    bp_rows = []
    for timepoint in TIMEPOINTS:
        sbp, sbp_max = data.bp_pooled.get(("sbp", timepoint), (Summary(0, None, None), None))
        dbp, dbp_max = data.bp_pooled.get(("dbp", timepoint), (Summary(0, None, None), None))
        bp_rows.append([timepoint, sbp.n, _fmt(sbp.mean), _fmt(sbp.sd), sbp_max, _fmt(dbp.mean), _fmt(dbp.sd),
                        dbp_max])
    sections.append(html_table(Table(["timepoint", "n", "mean SBP", "SD", "max SBP", "mean DBP", "SD", "max DBP"],
                                     bp_rows)))

    sections.append("<h2>Data quality by site</h2>")
    if data.quality and data.quality.rows:
        by_site = quality_by_site(data.quality)
        sections.append(_figure_html(plot_quality(by_site), "quality",
                                     "Rows delivered in each site's current transfer: landed, quarantined, and "
                                     "collapsed as identical duplicates; open flags on landed data."))
        sections.append(html_table(by_site))
    else:
        sections.append("<p>marts.data_quality is not in this warehouse, or empty.</p>")
    if data.checks and data.checks.rows:
        sections.append("<p>Checks of the catalogue (marts.data_quality_checks) that failed, by severity:</p>")
        sections.append(html_table(data.checks))

    if data.unblinded:
        sections.append("<h2>Efficacy by arm (UNBLINDED)</h2>")
        sections.append(_figure_html(plot_arm_change(data.efficacy, data.arms, data.visits, data.change_sd),
                                     "arm-change", "MADRS mean change from BL by arm ± 95 % CI (means from "
                                     "unblinded.efficacy_by_arm; SD from the randomization and "
                                     "marts.madrs_outcomes)."))
        sections.append(_figure_html(plot_arm_rates(data.efficacy, data.arms, data.visits), "arm-rates",
                                     "Responders and remitters as % of the arm's participants with a complete MADRS "
                                     "at the visit."))
        order = {v: i for i, v in enumerate(data.visits)}
        rows = [[r["arm"], r["visit"], r["n"], _fmt(r["mean_total"]), _fmt(r["mean_change"]),
                 _pct(int(r["responders"]), int(r["n"])), _pct(int(r["remitters"]), int(r["n"]))]
                for r in sorted(data.efficacy, key=lambda r: (r["arm"], order.get(r["visit"], len(order))))]
        sections.append(html_table(Table(["arm", "visit", "n", "mean total", "mean change", "responders",
                                          "remitters"], rows)))

    kind = "UNBLINDED" if data.unblinded else "blinded"
    banner = ('<div class="banner unblinded">UNBLINDED: this report shows results by arm. Restricted to the '
              "unblinded team; do not share with sites, raters or the blinded study team.</div>"
              if data.unblinded else
              '<div class="banner blinded">Blinded: all participants pooled; nothing by treatment group.</div>')
    run = (f"last run {html.escape(data.last_run[0])}"
           + (f", finished {data.last_run[1].astimezone(UTC):%Y-%m-%d %H:%M} UTC" if data.last_run[1] else "")
           if data.last_run else "no run recorded")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>KAP-TRD-01 trial report ({kind})</title><style>{CSS}</style></head><body>"
        f"<h1>KAP-TRD-01 trial report ({kind})</h1>"
        f"<p class=\"meta\">Generated {data.generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC; {run}.</p>"
        f"{banner}{''.join(sections)}</body></html>\n"
    )
