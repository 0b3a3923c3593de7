-- core.assessments: one row per subject, visit and instrument. The total is the sum of all
-- items, only when every item of the instrument is present and valid (DTS §3); C-SSRS has no
-- total and an ideation level instead: the highest ideation item answered 1 (0 if none).
with items as (
    select * from core.assessment_items where site_id = getvariable('site_id')
),

delivered_totals as (
    select subject_id, visit, instrument, max(delivered_total) as delivered_total
    from stg_assessment_items
    where delivered_total is not null
    group by all
),

baseline as (
    select subject_id, bl_date from core.participants where site_id = getvariable('site_id')
),

per_assessment as (
    select
        items.site_id,
        items.subject_id,
        items.visit,
        items.instrument,
        min(items.assessment_date) as assessment_date,
        count(*) as items_present,
        sum(items.score) as item_sum,
        coalesce(max(items.item) filter (
            where list_contains(getvariable('cssrs_ideation_items'), items.item) and items.score = 1
        ), 0) as highest_ideation_item,
        -- a form marked incomplete anywhere marks the assessment (min() would pick COMPLETE)
        case
            when bool_or(items.form_status = 'INCOMPLETE') then 'INCOMPLETE'
            else min(items.form_status)
        end as form_status,
        min(items.transfer_id) as transfer_id,
        min(items.source_file) as source_file,
        min(items.source_row) as source_row,
    from items
    group by all
)

select
    per_assessment.site_id,
    per_assessment.subject_id,
    per_assessment.visit,
    per_assessment.instrument,
    per_assessment.assessment_date,
    per_assessment.assessment_date - baseline.bl_date as study_day,
    case
        when instruments.has_total and per_assessment.items_present = instruments.items
            then per_assessment.item_sum
    end as total,
    per_assessment.items_present,
    per_assessment.items_present = instruments.items as is_complete,
    case when per_assessment.instrument = 'CSSRS' then per_assessment.highest_ideation_item end as ideation_level,
    per_assessment.form_status,
    delivered_totals.delivered_total,
    per_assessment.item_sum,
    per_assessment.transfer_id,
    per_assessment.source_file,
    per_assessment.source_row,
from per_assessment
join ref.instruments as instruments using (instrument)
left join baseline using (subject_id)
left join delivered_totals using (subject_id, visit, instrument)
