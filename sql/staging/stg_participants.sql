-- One row per participant landing from the transfer being landed (validated, conformed).
select
    site_id,
    subject_id,
    screening_date,
    consent_date,
    birth_year,
    sex,
    weight_kg,
    prior_ect = 'Y' as prior_ect,
    status,
    withdrawal_date,
    withdrawal_reason,
    form_status,
    transfer_id,
    source_file,
    source_row,
from valid_participants
