-- marts.data_quality_checks: one row per site and check of the catalogue (ref.checks), as OHDSI's
-- Data Quality Dashboard reports it: how many records of the site's current snapshot violate the
-- check, out of how many it saw. A quarantine rule counts the quarantined records of the current
-- transfer (a record names dataset, reason and column; a rule about the whole record has no
-- column); a flag counts its open flags. Every check applicable to a site is listed, passed or not.
with current_loads as (
    select loads.source as site_id, loads.dataset, loads.delivered
    from ops.loads as loads
    join ops.current_transfers using (source, transfer_id)
),

core_rows as (
    select site_id, 'participants' as dataset, count(*) as landed from core.participants group by all
    union all
    select site_id, 'sessions', count(*) from core.sessions group by all
    union all
    select site_id, 'vitals', count(*) from core.vitals group by all
    union all
    select site_id, 'assessment_items', count(*) from core.assessment_items group by all
    union all
    select site_id, 'assessments', count(*) from core.assessments group by all
    union all
    select site_id, 'adverse_events', count(*) from core.adverse_events group by all
),

quarantined_by_check as (
    select
        quarantine.source as site_id,
        quarantine.dataset,
        coalesce(by_column.check_id, by_record.check_id,
                 concat_ws('.', quarantine.dataset, quarantine.reason_code, quarantine.column_name)) as check_id,
        count(*) as violations,
    from ops.quarantine as quarantine
    join ops.current_transfers using (source, transfer_id)
    left join ref.checks as by_column
        on by_column.check_kind = 'quarantine'
        and by_column.dataset = quarantine.dataset
        and by_column.reason_code = quarantine.reason_code
        and by_column.column_name = quarantine.column_name
    left join ref.checks as by_record
        on by_record.check_kind = 'quarantine'
        and by_record.dataset = quarantine.dataset
        and by_record.reason_code = quarantine.reason_code
        and by_record.column_name is null
    group by all
),

open_flags_by_check as (
    select site_id, dataset, concat_ws('.', dataset, flag_type) as check_id, count(*) as violations
    from ops.flags
    where status = 'OPEN'
    group by all
),

applicable_checks as (
    select current_loads.site_id, checks.*, current_loads.delivered as rows_checked
    from ref.checks as checks
    join current_loads using (dataset)
    where checks.check_kind = 'quarantine'
    union all
    select core_rows.site_id, checks.*, core_rows.landed
    from ref.checks as checks
    join core_rows using (dataset)
    where checks.check_kind = 'flag'
),

violations as (
    select site_id, check_id, violations from quarantined_by_check
    union all
    select site_id, check_id, violations from open_flags_by_check
)

select
    coalesce(applicable_checks.site_id, violations.site_id) as site_id,
    coalesce(applicable_checks.check_id, violations.check_id) as check_id,
    applicable_checks.check_kind,
    coalesce(applicable_checks.dataset, split_part(violations.check_id, '.', 1)) as dataset,
    applicable_checks.category,
    applicable_checks.subcategory,
    applicable_checks.severity,
    coalesce(violations.violations, 0) as violations,
    applicable_checks.rows_checked,
    round(100.0 * coalesce(violations.violations, 0) / nullif(applicable_checks.rows_checked, 0), 2)
        as pct_violated,
    coalesce(violations.violations, 0) = 0 as passed,
from applicable_checks
-- a violation of a check the catalogue lacks is kept, with no category, rather than lost
full join violations using (site_id, check_id)
order by site_id, check_id
