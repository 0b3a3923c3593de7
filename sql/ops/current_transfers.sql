-- ops.current_transfers: each source's current transfer, the newest it landed (DTS §2.1). Its
-- snapshot is the source's state in core; a LATE, REJECTED or DUPLICATE transfer never is.
select source, max(transfer_id) as transfer_id
from ops.transfers
where status = 'LANDED'
group by source
