-- marts.visit_compliance: one row per site and visit of the schedule (DTS §3.1), for the data
-- manager and the monitors: how many visits were due, how many were done, in or out of their
-- window, and how many are missing as of the site's data cut-off.
--
-- Definitions (windows, anchors and planned days all from ref.visits):
-- - population: randomized participants (bl_date not null) who are not screen failures.
-- - data cut-off: the date part of the site's current transfer_id (the newest LANDED transfer of
--   the source in ops.transfers, a UTC export time): what the site could have entered by then.
-- - window of a visit: anchor date + window_min … anchor date + window_max, inclusive. The anchor
--   date is bl_date for BL-anchored visits; for INTn and D1P24 it is the actual date of the
--   dosing session they follow, or, when that session has no record, the anchor's planned date
--   (bl_date + the anchor's target day), so a missed dose does not hide the visit after it.
-- - due: the window closed on or before the cut-off, and the participant had not withdrawn
--   before the window opened (withdrawal_date null or on/after the window's first day).
-- - done: a record of the visit exists for the participant: an attended session for
--   PREPARATION, DOSING and INTEGRATION visits (dataset `sessions`), any instrument's
--   assessment for assessment visits (dataset `assessments`).
-- - expected: due, or done (a visit done before its window closed was evidently due), so that
--   done <= expected and missing = expected - done = due visits with no record.
-- - in / out of window: the WINDOW_DEVIATION rule of sql/ops/current_flags.sql, record by record:
--   days from the anchor (bl_date, or the anchor session's actual date) outside the window is a
--   deviation. A visit is out of window when any of its records is (one instrument is enough),
--   so out_of_window equals the distinct subjects with an open WINDOW_DEVIATION flag at that
--   visit and dataset (for sessions: attended ones). A done visit whose anchor session has no
--   record cannot be judged by that rule and counts in window_unknown, not in either.
-- - pct_done and pct_in_window: done and in_window as a percentage of expected.
with current_transfers as (
    select
        source as site_id,
        transfer_id as cutoff_transfer,
        strptime(transfer_id, '%Y%m%dT%H%M%SZ')::date as cutoff_date,
    from ops.current_transfers
),

sites as (
    select distinct site_id from core.participants
),

randomized as (
    select site_id, subject_id, bl_date, withdrawal_date
    from core.participants
    where bl_date is not null
        and status <> 'SCREEN_FAILED'
),

-- each visit with the dataset that records it and the planned day of its anchor
schedule as (
    select
        visits.visit,
        visits.kind as visit_kind,
        visits.anchor,
        visits.window_min,
        visits.window_max,
        case when visits.kind = 'assessment' then 'assessments' else 'sessions' end as dataset,
        anchors.target as anchor_target,
        anchors.target + visits.target as planned_day,
    from ref.visits as visits
    join ref.visits as anchors on anchors.visit = visits.anchor
),

-- every participant and visit with the dates the window counts from: actual (as the flag rule
-- uses it; null when the anchor session has no record) and for scheduling (planned as fallback)
participant_visits as (
    select
        randomized.site_id,
        randomized.subject_id,
        randomized.bl_date,
        randomized.withdrawal_date,
        schedule.*,
        case when schedule.anchor = 'BL' then randomized.bl_date else anchor_sessions.session_date end
            as actual_anchor_date,
        coalesce(actual_anchor_date, randomized.bl_date + schedule.anchor_target) as scheduled_anchor_date,
    from randomized
    cross join schedule
    left join core.sessions as anchor_sessions
        on anchor_sessions.site_id = randomized.site_id
        and anchor_sessions.subject_id = randomized.subject_id
        and anchor_sessions.visit = schedule.anchor
),

due_visits as (
    select
        participant_visits.*,
        participant_visits.scheduled_anchor_date + participant_visits.window_max <= cutoffs.cutoff_date
            and (
                participant_visits.withdrawal_date is null
                or participant_visits.withdrawal_date
                    >= participant_visits.scheduled_anchor_date + participant_visits.window_min
            ) as due,
    from participant_visits
    left join current_transfers as cutoffs using (site_id)
),

-- the dated records that make a visit done, as the WINDOW_DEVIATION rule sees them
visit_records as (
    select site_id, subject_id, visit, 'sessions' as dataset, session_date as visit_date,
    from core.sessions
    where attended
    union all
    select site_id, subject_id, visit, 'assessments', assessment_date
    from core.assessments
),

done_visits as (
    select
        due_visits.site_id,
        due_visits.subject_id,
        due_visits.visit,
        coalesce(bool_or(
            visit_records.visit_date - due_visits.actual_anchor_date
                not between due_visits.window_min and due_visits.window_max
        ), false) as out_of_window,
        coalesce(bool_and(
            visit_records.visit_date - due_visits.actual_anchor_date
                between due_visits.window_min and due_visits.window_max
        ), false) as in_window,
    from due_visits
    join visit_records using (site_id, subject_id, visit, dataset)
    group by all
),

subject_visits as (
    select
        due_visits.site_id,
        due_visits.visit,
        due_visits.subject_id,
        coalesce(due_visits.due, false) or done_visits.subject_id is not null as expected,
        done_visits.subject_id is not null as done,
        coalesce(done_visits.in_window, false) as in_window,
        coalesce(done_visits.out_of_window, false) as out_of_window,
    from due_visits
    left join done_visits using (site_id, subject_id, visit)
),

site_visit_counts as (
    select
        site_id,
        visit,
        count(*) filter (where expected) as expected,
        count(*) filter (where done) as done,
        count(*) filter (where in_window) as in_window,
        count(*) filter (where out_of_window) as out_of_window,
        count(*) filter (where done and not in_window and not out_of_window) as window_unknown,
        count(*) filter (where expected and not done) as missing,
    from subject_visits
    group by all
)

select
    sites.site_id,
    schedule.visit,
    schedule.visit_kind,
    schedule.dataset,
    schedule.planned_day,
    cutoffs.cutoff_date,
    cutoffs.cutoff_transfer,
    coalesce(counts.expected, 0) as expected,
    coalesce(counts.done, 0) as done,
    coalesce(counts.in_window, 0) as in_window,
    coalesce(counts.out_of_window, 0) as out_of_window,
    coalesce(counts.window_unknown, 0) as window_unknown,
    coalesce(counts.missing, 0) as missing,
    round(100.0 * counts.done / nullif(counts.expected, 0), 2) as pct_done,
    round(100.0 * counts.in_window / nullif(counts.expected, 0), 2) as pct_in_window,
from sites
cross join schedule
left join current_transfers as cutoffs using (site_id)
left join site_visit_counts as counts using (site_id, visit)
order by sites.site_id, schedule.planned_day, schedule.visit
