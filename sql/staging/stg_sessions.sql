-- One row per session (subject x visit) landing from the transfer being landed.
select
    site_id,
    subject_id,
    visit,
    session_date,
    start_time,
    duration_min,
    therapist_id,
    attended = 'Y' as attended,
    route,
    dose_mg,
    weight_kg,
    infusion_min,
    form_status,
    transfer_id,
    source_file,
    source_row,
from valid_sessions
