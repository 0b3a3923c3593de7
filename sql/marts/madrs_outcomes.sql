-- marts.madrs_outcomes: one row per subject and post-baseline visit, blinded. Only complete
-- MADRS assessments of forms not marked incomplete count for endpoints (DTS §1, §4): change
-- from baseline, percent change, response (total reduced by at least the study's response
-- percentage from BL) and remission (total at or below the study's remission threshold).
with endpoint_assessments as (
    select site_id, subject_id, visit, total, study_day
    from core.assessments
    where instrument = 'MADRS'
        and is_complete
        and coalesce(form_status, '') <> 'INCOMPLETE'
),

baselines as (
    select subject_id, total as baseline_total
    from endpoint_assessments
    where visit = 'BL'
),

post_baseline as (
    select endpoint_assessments.*
    from endpoint_assessments
    join ref.visits as visits using (visit)
    where visits.target > 0 or visits.anchor <> 'BL'
)

select
    post_baseline.site_id,
    post_baseline.subject_id,
    post_baseline.visit,
    post_baseline.study_day,
    baselines.baseline_total,
    post_baseline.total,
    post_baseline.total - baselines.baseline_total as change,
    round(100.0 * (post_baseline.total - baselines.baseline_total) / nullif(baselines.baseline_total, 0), 2)
        as pct_change,
    baselines.baseline_total > 0
        and (baselines.baseline_total - post_baseline.total) * 100
            >= getvariable('response_pct_reduction') * baselines.baseline_total as response,
    post_baseline.total <= getvariable('remission_max_total') as remission,
from post_baseline
join baselines using (subject_id)
order by post_baseline.site_id, post_baseline.subject_id, post_baseline.visit
