-- unblinded.efficacy_by_arm: one row per arm and visit, from the blinded MADRS outcomes and
-- the randomization (`randomization`, registered from the unblinded store for this query only).
select
    randomization.arm,
    outcomes.visit,
    count(*) as n,
    round(avg(outcomes.total), 4) as mean_total,
    round(avg(outcomes.change), 4) as mean_change,
    count(*) filter (where outcomes.response) as responders,
    count(*) filter (where outcomes.remission) as remitters,
from marts.madrs_outcomes as outcomes
join randomization using (subject_id)
group by all
order by randomization.arm, outcomes.visit
