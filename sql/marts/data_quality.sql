-- marts.data_quality: one row per site and dataset of the current snapshot: what was delivered,
-- landed, quarantined (in all and by reason), collapsed as identical duplicates, open flags, and
-- the violations of the check catalogue by Kahn category (from marts.data_quality_checks).
-- Flags on assessments, which are derived from the delivered item scores, count under
-- assessment_items: the data manager queries the site about the items.
with loads as (
    select loads.*
    from ops.loads as loads
    join ops.current_transfers using (source, transfer_id)
),

quarantine_by_reason as (
    select
        quarantine.source,
        quarantine.dataset,
        count(*) filter (where reason_code = 'UNPARSEABLE') as quarantined_unparseable,
        count(*) filter (where reason_code = 'MISSING_REQUIRED') as quarantined_missing_required,
        count(*) filter (where reason_code = 'OUT_OF_RANGE') as quarantined_out_of_range,
        count(*) filter (where reason_code = 'UNKNOWN_SUBJECT') as quarantined_unknown_subject,
        count(*) filter (where reason_code = 'CONFLICTING_DUPLICATE') as quarantined_conflicting_duplicate,
        count(*) filter (where reason_code = 'INVALID_VISIT') as quarantined_invalid_visit,
        count(*) filter (where reason_code = 'INCONSISTENT') as quarantined_inconsistent,
    from ops.quarantine as quarantine
    join ops.current_transfers using (source, transfer_id)
    group by all
),

open_flags as (
    select site_id, dataset, count(*) as open_flags
    from ops.flags
    where status = 'OPEN'
    group by all
),

delivered_datasets as (
    select
        site_id,
        case when dataset = 'assessments' then 'assessment_items' else dataset end as dataset,
        violations,
        category,
    from marts.data_quality_checks
),

open_flags_by_delivered_dataset as (
    select site_id, case when dataset = 'assessments' then 'assessment_items' else dataset end as dataset,
        sum(open_flags)::bigint as open_flags
    from open_flags
    group by all
),

violations_by_category as (
    select
        site_id,
        dataset,
        sum(violations) filter (where category = 'conformance')::bigint as violations_conformance,
        sum(violations) filter (where category = 'completeness')::bigint as violations_completeness,
        sum(violations) filter (where category = 'plausibility')::bigint as violations_plausibility,
    from delivered_datasets
    group by all
)

select
    loads.source as site_id,
    loads.dataset,
    loads.transfer_id,
    loads.delivered,
    loads.landed,
    loads.quarantined,
    loads.duplicates_collapsed,
    coalesce(quarantine_by_reason.quarantined_unparseable, 0) as quarantined_unparseable,
    coalesce(quarantine_by_reason.quarantined_missing_required, 0) as quarantined_missing_required,
    coalesce(quarantine_by_reason.quarantined_out_of_range, 0) as quarantined_out_of_range,
    coalesce(quarantine_by_reason.quarantined_unknown_subject, 0) as quarantined_unknown_subject,
    coalesce(quarantine_by_reason.quarantined_conflicting_duplicate, 0) as quarantined_conflicting_duplicate,
    coalesce(quarantine_by_reason.quarantined_invalid_visit, 0) as quarantined_invalid_visit,
    coalesce(quarantine_by_reason.quarantined_inconsistent, 0) as quarantined_inconsistent,
    coalesce(open_flags.open_flags, 0) as open_flags,
    coalesce(violations_by_category.violations_conformance, 0) as violations_conformance,
    coalesce(violations_by_category.violations_completeness, 0) as violations_completeness,
    coalesce(violations_by_category.violations_plausibility, 0) as violations_plausibility,
from loads
left join quarantine_by_reason using (source, dataset)
left join open_flags_by_delivered_dataset as open_flags
    on open_flags.site_id = loads.source and open_flags.dataset = loads.dataset
left join violations_by_category
    on violations_by_category.site_id = loads.source and violations_by_category.dataset = loads.dataset
order by site_id, dataset
