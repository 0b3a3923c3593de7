-- One row per adverse event (subject x ae_id) landing from the transfer being landed.
select
    site_id,
    subject_id,
    ae_id,
    term,
    onset_date,
    end_date,
    severity,
    serious = 'Y' as serious,
    related,
    outcome,
    action,
    form_status,
    transfer_id,
    source_file,
    source_row,
from valid_adverse_events
