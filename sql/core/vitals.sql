-- core.vitals: one row per subject, dosing visit and timepoint of the site's current snapshot.
select
    site_id,
    subject_id,
    visit,
    timepoint,
    measured_time,
    sbp,
    dbp,
    hr,
    spo2,
    form_status,
    transfer_id,
    source_file,
    source_row,
from stg_vitals
