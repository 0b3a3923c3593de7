-- One row per vital-signs timepoint (subject x visit x timepoint) landing from the transfer.
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
from valid_vitals
