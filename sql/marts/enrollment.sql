-- marts.enrollment: one row per site; screened counts everyone screened, the other columns
-- count participants by their current status, randomized those with a BL visit.
select
    site_id,
    count(*) as screened,
    count(*) filter (where status = 'SCREEN_FAILED') as screen_failed,
    count(*) filter (where status = 'ENROLLED') as enrolled,
    count(*) filter (where status = 'COMPLETED') as completed,
    count(*) filter (where status = 'WITHDRAWN') as withdrawn,
    count(*) filter (where status = 'SCREENED') as awaiting_randomization,
    count(*) filter (where bl_date is not null) as randomized,
from core.participants
group by site_id
order by site_id
