-- core.assessment_items: one row per subject, visit, instrument and item of the current snapshot.
select
    site_id,
    subject_id,
    visit,
    instrument,
    item,
    score,
    assessment_date,
    rater_id,
    form_status,
    transfer_id,
    source_file,
    source_row,
from stg_assessment_items
