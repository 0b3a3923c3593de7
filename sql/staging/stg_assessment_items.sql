-- One row per assessment item (subject x visit x instrument x item) landing from the transfer.
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
    -- REDCap's calculated total of the form, as delivered (null for other formats)
    delivered_total,
    transfer_id,
    source_file,
    source_row,
from valid_assessment_items
