-- core.adverse_events: one row per subject and ae_id, the verbatim term coded through the
-- trial's term dictionary (equal after trimming and case folding; DTS §3).
select
    events.site_id,
    events.subject_id,
    events.ae_id,
    events.term,
    terms.preferred_term,
    terms.body_system,
    events.onset_date,
    events.end_date,
    events.severity,
    events.serious,
    events.related,
    events.outcome,
    events.action,
    events.form_status,
    events.transfer_id,
    events.source_file,
    events.source_row,
from stg_adverse_events as events
left join ref.ae_terms as terms on lower(regexp_replace(events.term, '^[\s\p{Z}]+|[\s\p{Z}]+$', '', 'g')) = terms.verbatim_key
