-- marts.madrs_outcomes: one row per subject and post-baseline visit, blinded. Only complete
-- MADRS assessments of forms not marked incomplete count for endpoints (DTS §1, §4): change
-- from baseline, percent change, response (total reduced by at least the study's response
-- percentage from BL), remission (total at or below the study's remission threshold) and
-- sustained response (a response at each of the study's sustained-response visits).
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
),

outcomes as (
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
),

-- sustained response: a response at every visit of the study's list; false as soon as one of
-- them is not a response, unknown while one of them has no complete MADRS yet
sustained as (
    select
        subject_id,
        case
            when bool_or(not response) then false
            when count(*) = len(getvariable('sustained_response_visits')) then true
        end as sustained_response,
    from outcomes
    where list_contains(getvariable('sustained_response_visits'), visit)
    group by subject_id
)

select outcomes.*, sustained.sustained_response
from outcomes
left join sustained using (subject_id)
order by outcomes.site_id, outcomes.subject_id, outcomes.visit
