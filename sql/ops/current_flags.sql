-- The flags that hold in the current snapshot of one site (DTS §6): one row per flagged
-- thing, with an id derived from what it is about, so the same problem in the next snapshot
-- is the same open item. Thresholds come from schemas/study.yaml through ref.* and variables.
with participants as (
    select * from core.participants where site_id = getvariable('site_id')
),

sessions as (
    select * from core.sessions where site_id = getvariable('site_id')
),

assessments as (
    select * from core.assessments where site_id = getvariable('site_id')
),

items as (
    select * from core.assessment_items where site_id = getvariable('site_id')
),

vitals as (
    select * from core.vitals where site_id = getvariable('site_id')
),

adverse_events as (
    select * from core.adverse_events where site_id = getvariable('site_id')
),

-- the dated records of the schedule, each with the date its window counts from
dated_visits as (
    select
        'sessions' as dataset, subject_id, visit, null::varchar as instrument, session_date as visit_date,
    from sessions
    union all
    select 'assessments', subject_id, visit, instrument, assessment_date
    from assessments
),

anchored_visits as (
    select
        dated_visits.*,
        visits.window_min,
        visits.window_max,
        dated_visits.visit_date - case
            when visits.anchor = 'BL' then participants.bl_date
            else anchor_sessions.session_date
        end as days_from_anchor,
        visits.anchor,
    from dated_visits
    join ref.visits as visits using (visit)
    join participants using (subject_id)
    left join sessions as anchor_sessions
        on anchor_sessions.subject_id = dated_visits.subject_id and anchor_sessions.visit = visits.anchor
    where participants.bl_date is not null
),

window_deviations as (
    select
        'WINDOW_DEVIATION' as flag_type, subject_id, visit, dataset,
        concat_ws('|', dataset, instrument) as detail,
        format('{} {} on day {} from {} (window {}…{})', coalesce(instrument, 'session'), visit,
               days_from_anchor, anchor, window_min, window_max) as message,
    from anchored_visits
    where days_from_anchor not between window_min and window_max
),

dose_deviations as (
    select
        'DOSE_DEVIATION', sessions.subject_id, sessions.visit, 'sessions',
        sessions.route,
        format('{} dose {} mg ({} mg/kg){} outside the protocol range', sessions.route, sessions.dose_mg,
               round(sessions.dose_mg_per_kg, 3),
               case when sessions.route = 'IV' then format(', infusion {} min', sessions.infusion_min) else '' end),
    from sessions
    join ref.dose_ranges as ranges using (route)
    where sessions.dose_mg is not null
        and (
            -- in decimal arithmetic: a dose exactly on an inclusive edge (IM 101.4 mg at 67.6 kg is
            -- 1.5 mg/kg) must not fall outside through a binary rounding error
            sessions.dose_mg::decimal(18, 6) not between
                ranges.min::decimal(18, 6) * (case when ranges.basis = 'mg_per_kg' then sessions.weight_kg else 1 end)::decimal(18, 6)
                and ranges.max::decimal(18, 6) * (case when ranges.basis = 'mg_per_kg' then sessions.weight_kg else 1 end)::decimal(18, 6)
            or sessions.infusion_min not between ranges.infusion_min and ranges.infusion_max
        )
),

age_deviations as (
    select
        'AGE_DEVIATION', subject_id, null, 'participants', '',
        format('age at consent {} outside {}–{}', age_at_consent, getvariable('age_at_consent_min'),
               getvariable('age_at_consent_max')),
    from participants
    where age_at_consent not between getvariable('age_at_consent_min') and getvariable('age_at_consent_max')
),

incomplete_assessments as (
    select
        'INCOMPLETE_ASSESSMENT', assessments.subject_id, assessments.visit, 'assessments', assessments.instrument,
        format('{} has {} of {} items', assessments.instrument, assessments.items_present, instruments.items),
    from assessments
    join ref.instruments as instruments using (instrument)
    where not assessments.is_complete
),

incomplete_forms as (
    select 'FORM_INCOMPLETE', subject_id, visit, 'sessions', 'session', 'form marked Incomplete (status 0)'
    from sessions where form_status = 'INCOMPLETE'
    union all
    select 'FORM_INCOMPLETE', subject_id, visit, 'assessments', instrument,
        format('{} form marked Incomplete (status 0)', instrument)
    from assessments where form_status = 'INCOMPLETE'
    union all
    select 'FORM_INCOMPLETE', subject_id, visit, 'vitals', timepoint, 'vital signs form marked Incomplete (status 0)'
    from vitals where form_status = 'INCOMPLETE'
    union all
    select 'FORM_INCOMPLETE', subject_id, null, 'participants', 'participant',
        'enrollment or study status form marked Incomplete (status 0)'
    from participants where form_status = 'INCOMPLETE'
    union all
    select 'FORM_INCOMPLETE', subject_id, null, 'adverse_events', ae_id,
        format('adverse event {} form marked Incomplete (status 0)', ae_id)
    from adverse_events where form_status = 'INCOMPLETE'
),

-- REDCap's calculated total against the sum of the landed items: the items win (DTS §4)
total_mismatches as (
    select
        'TOTAL_MISMATCH', subject_id, visit, 'assessments', instrument,
        format('{} calculated total {} differs from the item sum {}', instrument, delivered_total, item_sum),
    from assessments
    where delivered_total is not null
        and try_cast(delivered_total as bigint) is distinct from item_sum
),

safety_vitals as (
    select
        'SAFETY_VITALS', subject_id, visit, 'vitals', timepoint,
        format('{} BP {}/{} mmHg, HR {}, SpO2 {} %', timepoint, sbp, dbp, hr, spo2),
    from vitals
    where sbp >= getvariable('sbp_min_flag')
        or dbp >= getvariable('dbp_min_flag')
        or hr >= getvariable('hr_min_flag')
        or spo2 < getvariable('spo2_below_flag')
),

safety_items as (
    select
        'SAFETY_SUICIDALITY', items.subject_id, items.visit, 'assessment_items',
        items.instrument || '|' || items.item,
        format('{} item {} = {}', items.instrument, items.item, items.score),
    from items
    join ref.safety_items as rules using (instrument, item)
    where items.score >= rules.min_score
),

serious_events as (
    select
        'SAFETY_SAE', subject_id, null, 'adverse_events', ae_id,
        format('serious adverse event {}: {} ({}, onset {})', ae_id, term, severity, onset_date),
    from adverse_events
    where serious
),

uncoded_terms as (
    select
        'UNCODED_TERM', subject_id, null, 'adverse_events', ae_id,
        format('verbatim term ''{}'' of {} is not in the term dictionary', term, ae_id),
    from adverse_events
    where preferred_term is null
),

all_flags as (
    select * from window_deviations
    union all select * from dose_deviations
    union all select * from age_deviations
    union all select * from incomplete_assessments
    union all select * from incomplete_forms
    union all select * from total_mismatches
    union all select * from safety_vitals
    union all select * from safety_items
    union all select * from serious_events
    union all select * from uncoded_terms
)

select distinct on (flag_id)
    md5(concat_ws('|', flag_type, subject_id, coalesce(visit, ''), dataset, detail)) as flag_id,
    flag_type,
    getvariable('site_id') as site_id,
    subject_id,
    visit,
    dataset,
    detail,
    message,
from all_flags
order by flag_id
