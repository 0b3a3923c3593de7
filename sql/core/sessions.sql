-- core.sessions: one row per subject and visit of the site's current snapshot, with the
-- study day (from bl_date) and the dose per kg of the session's own weight.
with baseline as (
    select subject_id, bl_date
    from core.participants
    where site_id = getvariable('site_id')
)

select
    sessions.site_id,
    sessions.subject_id,
    sessions.visit,
    visits.kind as session_type,
    sessions.session_date,
    sessions.session_date - baseline.bl_date as study_day,
    sessions.start_time,
    sessions.duration_min,
    sessions.therapist_id,
    sessions.attended,
    sessions.route,
    sessions.dose_mg,
    sessions.weight_kg,
    sessions.dose_mg / sessions.weight_kg as dose_mg_per_kg,
    sessions.infusion_min,
    sessions.form_status,
    sessions.transfer_id,
    sessions.source_file,
    sessions.source_row,
from stg_sessions as sessions
left join baseline using (subject_id)
left join ref.visits as visits using (visit)
