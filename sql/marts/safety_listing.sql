-- marts.safety_listing: one row per safety flag (SAFETY_VITALS, SAFETY_SUICIDALITY, SAFETY_SAE
-- of ops.flags; DTS §3, §6), open and closed, for the medical monitor: the flag with the values
-- of the record behind it and that record's lineage, so each can be traced to the delivered row.
--
-- The record is found the way sql/ops/current_flags.sql names it in the flag's `detail`: a vital
-- by subject, visit and timepoint; an item by subject, visit and `instrument|item`; an adverse
-- event by subject and ae_id. Values and lineage are those of the record in the current snapshot:
-- for a flag closed by a corrected value they show the corrected value (the message keeps the
-- values last flagged); for a flag whose record left the snapshot (deleted, or quarantined now)
-- they are null and record_present is false.
with safety_flags as (
    select *
    from ops.flags
    where starts_with(flag_type, 'SAFETY_')
),

vitals_behind as (
    select
        flags.flag_id,
        vitals.timepoint,
        vitals.measured_time,
        vitals.sbp,
        vitals.dbp,
        vitals.hr,
        vitals.spo2,
        dosing_sessions.session_date as visit_date,
        vitals.transfer_id,
        vitals.source_file,
        vitals.source_row,
    from safety_flags as flags
    join core.vitals as vitals
        on vitals.site_id = flags.site_id
        and vitals.subject_id = flags.subject_id
        and vitals.visit = flags.visit
        and vitals.timepoint = flags.detail
    left join core.sessions as dosing_sessions
        on dosing_sessions.site_id = vitals.site_id
        and dosing_sessions.subject_id = vitals.subject_id
        and dosing_sessions.visit = vitals.visit
    where flags.flag_type = 'SAFETY_VITALS'
),

items_behind as (
    select
        flags.flag_id,
        items.instrument,
        items.item,
        items.score,
        items.assessment_date,
        items.transfer_id,
        items.source_file,
        items.source_row,
    from safety_flags as flags
    join core.assessment_items as items
        on items.site_id = flags.site_id
        and items.subject_id = flags.subject_id
        and items.visit = flags.visit
        and items.instrument || '|' || items.item = flags.detail
    where flags.flag_type = 'SAFETY_SUICIDALITY'
),

events_behind as (
    select
        flags.flag_id,
        events.ae_id,
        events.term,
        events.preferred_term,
        events.body_system,
        events.onset_date,
        events.end_date,
        events.severity,
        events.serious,
        events.related,
        events.outcome,
        events.action,
        events.transfer_id,
        events.source_file,
        events.source_row,
    from safety_flags as flags
    join core.adverse_events as events
        on events.site_id = flags.site_id
        and events.subject_id = flags.subject_id
        and events.ae_id = flags.detail
    where flags.flag_type = 'SAFETY_SAE'
)

select
    flags.flag_id,
    flags.flag_type,
    flags.status,
    flags.site_id,
    flags.subject_id,
    flags.visit,
    flags.message,
    flags.first_seen_transfer,
    flags.last_seen_transfer,
    flags.closed_transfer,
    coalesce(vitals_behind.flag_id, items_behind.flag_id, events_behind.flag_id) is not null as record_present,
    -- SAFETY_VITALS
    vitals_behind.visit_date,
    vitals_behind.timepoint,
    vitals_behind.measured_time,
    vitals_behind.sbp,
    vitals_behind.dbp,
    vitals_behind.hr,
    vitals_behind.spo2,
    -- SAFETY_SUICIDALITY
    items_behind.instrument,
    items_behind.item,
    items_behind.score,
    items_behind.assessment_date,
    -- SAFETY_SAE
    events_behind.ae_id,
    events_behind.term,
    events_behind.preferred_term,
    events_behind.body_system,
    events_behind.onset_date,
    events_behind.end_date,
    events_behind.severity,
    events_behind.serious,
    events_behind.related,
    events_behind.outcome,
    events_behind.action,
    -- lineage of the record behind the flag
    coalesce(vitals_behind.transfer_id, items_behind.transfer_id, events_behind.transfer_id) as transfer_id,
    coalesce(vitals_behind.source_file, items_behind.source_file, events_behind.source_file) as source_file,
    coalesce(vitals_behind.source_row, items_behind.source_row, events_behind.source_row) as source_row,
from safety_flags as flags
left join vitals_behind using (flag_id)
left join items_behind using (flag_id)
left join events_behind using (flag_id)
order by flags.site_id, flags.subject_id, flags.flag_type, flags.visit, flags.first_seen_transfer, flags.flag_id
