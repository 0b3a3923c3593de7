-- core.participants: one row per screened person of the site's current snapshot.
-- bl_date is the date of the participant's landed BL assessments (DTS §3.1, study day 0).
with baseline_dates as (
    select
        subject_id,
        min(assessment_date) as bl_date,
    from stg_assessment_items
    where visit = 'BL'
    group by subject_id
)

select
    participants.site_id,
    participants.subject_id,
    participants.screening_date,
    participants.consent_date,
    participants.birth_year,
    year(participants.consent_date) - participants.birth_year as age_at_consent,
    participants.sex,
    participants.weight_kg,
    participants.prior_ect,
    participants.status,
    participants.withdrawal_date,
    participants.withdrawal_reason,
    baseline_dates.bl_date,
    participants.form_status,
    participants.transfer_id,
    participants.source_file,
    participants.source_row,
from stg_participants as participants
left join baseline_dates using (subject_id)
