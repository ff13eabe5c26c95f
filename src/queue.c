/*-------------------------------------------------------------------------
 *
 * queue.c
 *		  The dispatcher's bookkeeping in the task store: finding and claiming
 *		  queued tasks, and recording starts and outcomes.
 *
 * All of it runs in one short transaction per turn of the event loop
 * (QueueBegin ... QueueCommit), never across a wait, with prepared SPI
 * plans.  A task's start is committed before its SQL is sent, so a task is
 * never sent twice: after a crash, a task still marked running is failed as
 * interrupted rather than run again.
 *
 * Submitters lock task rows while they cancel, reschedule or delete them.
 * The dispatcher never waits for those locks: every statement that writes a
 * task row skips locked rows, and an outcome that cannot be recorded yet is
 * kept and recorded on a later turn.  Completion notifications are sent in
 * the same transaction that records the outcome.
 *
 * IDENTIFICATION
 *		  src/queue.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "dispatcher.h"

/* Pools with queued tasks: a loose index scan over task_queued_idx. */
#define FIND_POOLS_SQL \
	"WITH RECURSIVE p(server_id, userid) AS (" \
	" (SELECT server_id, userid FROM task_fdw.task" \
	"   WHERE state OPERATOR(pg_catalog.=) 'queued'" \
	"   ORDER BY server_id, userid LIMIT 1)" \
	" UNION ALL" \
	" SELECT n.server_id, n.userid FROM p, LATERAL" \
	" (SELECT t.server_id, t.userid FROM task_fdw.task t" \
	"   WHERE t.state OPERATOR(pg_catalog.=) 'queued'" \
	"     AND (t.server_id, t.userid) OPERATOR(pg_catalog.>) (p.server_id, p.userid)" \
	"   ORDER BY t.server_id, t.userid LIMIT 1) n)" \
	" SELECT server_id, userid FROM p"

/*
 * Claim runnable tasks of one pool: due, highest priority first, then
 * oldest.  Rows locked by a submitter's UPDATE or DELETE in progress are
 * skipped, never waited for.
 */
#define FETCH_SQL \
	"SELECT id, sql, timeout, max_attempts, attempts, retry_sqlstates, retry_delay," \
	"       retry_interrupted, submitted_at" \
	" FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued'" \
	"   AND server_id OPERATOR(pg_catalog.=) $1" \
	"   AND userid OPERATOR(pg_catalog.=) $2" \
	"   AND (run_at IS NULL OR run_at OPERATOR(pg_catalog.<=) $4)" \
	" ORDER BY priority DESC, id LIMIT $3" \
	" FOR UPDATE SKIP LOCKED"

/* Record a start, unless the task was cancelled, deleted or postponed. */
#define START_SQL \
	"UPDATE task_fdw.task SET state = 'running', started_at = $2, remote_pid = $3," \
	" attempts = $4" \
	" WHERE id OPERATOR(pg_catalog.=) (SELECT id FROM task_fdw.task" \
	"   WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'queued'" \
	"     AND (run_at IS NULL OR run_at OPERATOR(pg_catalog.<=) $2)" \
	"   FOR UPDATE SKIP LOCKED)"

/*
 * Record an outcome: final, or queued again for a retry at $14 (which a
 * cancel committed meanwhile turns into cancelled).  Returns the state
 * recorded; no row if the task is gone, final already, or locked.
 */
#define FINISH_SQL \
	"UPDATE task_fdw.task t SET state = s.state," \
	" finished_at = CASE WHEN s.state OPERATOR(pg_catalog.=) 'queued' THEN NULL ELSE $3 END," \
	" run_at = CASE WHEN s.state OPERATOR(pg_catalog.=) 'queued' THEN $14 ELSE t.run_at END," \
	" command_tag = $4, rows = $5, result = $6, result_truncated = $7, error = $8," \
	" sqlstate = $9, error_detail = $10, error_hint = $11, error_context = $12," \
	" attempts = $13, notices = $15" \
	" FROM (SELECT id, CASE WHEN $2 OPERATOR(pg_catalog.=) 'queued'" \
	"                   AND cancel_requested_at IS NOT NULL" \
	"              THEN 'cancelled' ELSE $2 END AS state" \
	"         FROM task_fdw.task" \
	"        WHERE id OPERATOR(pg_catalog.=) $1" \
	"          AND state OPERATOR(pg_catalog.=) ANY ('{queued,running}'::pg_catalog.text[])" \
	"        FOR UPDATE SKIP LOCKED) s" \
	" WHERE t.id OPERATOR(pg_catalog.=) s.id" \
	" RETURNING s.state"

/* Whether an unrecorded task is still there to record (so it was locked). */
#define PENDING_SQL \
	"SELECT 1 FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) $1" \
	"   AND state OPERATOR(pg_catalog.=) ANY ('{queued,running}'::pg_catalog.text[])"

/* Of the running tasks $1, those whose submitter cancelled or deleted them. */
#define CANCELLED_SQL \
	"SELECT r.id FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS r(id)" \
	" WHERE NOT EXISTS (SELECT FROM task_fdw.task t" \
	"   WHERE t.id OPERATOR(pg_catalog.=) r.id AND t.cancel_requested_at IS NULL)"

/* The next time a queued task scheduled for later becomes due. */
#define NEXT_RUN_AT_SQL \
	"SELECT run_at FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued' AND run_at IS NOT NULL" \
	"   AND run_at OPERATOR(pg_catalog.>) $1" \
	" ORDER BY run_at LIMIT 1"

/* Retention: remove a batch of tasks that finished before $1. */
#define PURGE_SQL \
	"DELETE FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	" SELECT id FROM task_fdw.task" \
	"  WHERE state OPERATOR(pg_catalog.=) ANY ('{done,failed,cancelled}'::pg_catalog.text[])" \
	"    AND finished_at OPERATOR(pg_catalog.<) $1" \
	"  ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED))"

/*
 * Tasks an earlier dispatcher left running were interrupted by a crash:
 * failed, or queued again if their submitter said they may run twice (and
 * did not cancel them meanwhile).
 */
#define RECOVER_SQL \
	"UPDATE task_fdw.task SET" \
	" state = CASE WHEN retry_interrupted AND cancel_requested_at IS NULL" \
	"              THEN 'queued' ELSE 'failed' END," \
	" finished_at = CASE WHEN retry_interrupted AND cancel_requested_at IS NULL" \
	"                    THEN NULL ELSE pg_catalog.now() END," \
	" sqlstate = '57P02', error = 'task was interrupted: the dispatcher stopped" \
	" while it ran, and the remote server may or may not have completed it'" \
	" WHERE state OPERATOR(pg_catalog.=) 'running'"

static SPIPlanPtr find_pools_plan = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr start_plan = NULL;
static SPIPlanPtr finish_plan = NULL;
static SPIPlanPtr pending_plan = NULL;
static SPIPlanPtr cancelled_plan = NULL;
static SPIPlanPtr next_run_at_plan = NULL;
static SPIPlanPtr purge_plan = NULL;

static SPIPlanPtr prepare_plan(const char *sql, int nargs, Oid *argtypes);
static Datum text_or_null(const char *s, char *nulls, int i);
static Datum text_array(List *strings);


/*
 * store_natts returns the number of columns of the task store relid, whose
 * lock the caller holds.
 */
static int
store_natts(Oid relid)
{
	Relation	rel = relation_open(relid, NoLock);
	int			natts = RelationGetNumberOfAttributes(rel);

	relation_close(rel, NoLock);
	return natts;
}

/* The memory context QueueBegin was called in, restored by QueueCommit. */
static MemoryContext caller_cxt = NULL;

/*
 * QueueBegin starts a dispatcher transaction with SPI and a snapshot, and
 * takes the task store's lock for writing.  With nowait, it does not wait
 * for that lock: if another transaction holds a conflicting one (DDL on the
 * store, DROP EXTENSION), it ends the transaction and returns QUEUE_BUSY.
 * It returns QUEUE_GONE, also without a transaction, if the extension is no
 * longer installed.
 */
QueueStatus
QueueBegin(bool nowait)
{
	Oid			nspid;
	Oid			relid = InvalidOid;

	caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	nspid = get_namespace_oid("task_fdw", true);
	if (OidIsValid(nspid))
		relid = get_relname_relid("task", nspid);
	if (!OidIsValid(relid) ||
		(nowait && !ConditionalLockRelationOid(relid, RowExclusiveLock)))
	{
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller_cxt);
		return OidIsValid(relid) ? QUEUE_BUSY : QUEUE_GONE;
	}
	if (!nowait)
		LockRelationOid(relid, RowExclusiveLock);
	if (store_natts(relid) != Natts_task)
	{
		/* Installed by an older version: wait for ALTER EXTENSION UPDATE. */
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller_cxt);
		return QUEUE_OUTDATED;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	/* The query text stays the summary StatsPublish reports. */
	pgstat_report_activity(STATE_RUNNING, NULL);
	return QUEUE_OK;
}

/*
 * QueueCommit commits the dispatcher transaction QueueBegin started, and
 * returns to the memory context QueueBegin was called in.
 */
void
QueueCommit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(caller_cxt);
}

/*
 * prepare_plan prepares sql and keeps the plan for the life of the process.
 */
static SPIPlanPtr
prepare_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "could not prepare task_fdw statement: %s",
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * QueuePrepare prepares the dispatcher's statements.
 */
void
QueuePrepare(void)
{
	Oid			fetch_types[4] = {OIDOID, OIDOID, INT4OID, TIMESTAMPTZOID};
	Oid			start_types[4] = {INT8OID, TIMESTAMPTZOID, INT4OID, INT4OID};
	Oid			finish_types[15] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, JSONBOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID, TIMESTAMPTZOID, TEXTARRAYOID};
	Oid			id_type[1] = {INT8OID};
	Oid			ids_type[1] = {INT8ARRAYOID};
	Oid			time_type[1] = {TIMESTAMPTZOID};
	Oid			purge_types[2] = {TIMESTAMPTZOID, INT4OID};

	find_pools_plan = prepare_plan(FIND_POOLS_SQL, 0, NULL);
	fetch_plan = prepare_plan(FETCH_SQL, 4, fetch_types);
	start_plan = prepare_plan(START_SQL, 4, start_types);
	finish_plan = prepare_plan(FINISH_SQL, 15, finish_types);
	pending_plan = prepare_plan(PENDING_SQL, 1, id_type);
	cancelled_plan = prepare_plan(CANCELLED_SQL, 1, ids_type);
	next_run_at_plan = prepare_plan(NEXT_RUN_AT_SQL, 1, time_type);
	purge_plan = prepare_plan(PURGE_SQL, 2, purge_types);
}

/*
 * QueueRecoverInterrupted fails the tasks an earlier dispatcher left
 * running, and returns how many there were.
 */
int
QueueRecoverInterrupted(void)
{
	if (SPI_execute(RECOVER_SQL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not recover interrupted tasks");
	return (int) SPI_processed;
}

/*
 * QueueFindPools notes every pool that has queued tasks.
 */
void
QueueFindPools(void)
{
	uint64		i;

	if (SPI_execute_plan(find_pools_plan, NULL, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for queued tasks");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Oid			serverid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			userid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));

		PoolLookup(serverid, userid, true)->has_queued = true;
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * QueueFetch claims up to limit more runnable tasks of pool, highest
 * priority first, into pool's held list.  Tasks already held are skipped.
 */
void
QueueFetch(Pool *pool, int limit, TimestampTz now)
{
	Datum		values[4];
	uint64		i;
	int			added = 0;
	int			asked = limit + pool->nheld;

	values[0] = ObjectIdGetDatum(pool->key.serverid);
	values[1] = ObjectIdGetDatum(pool->key.userid);
	values[2] = Int32GetDatum(asked);
	values[3] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(fetch_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not fetch queued tasks");

	for (i = 0; i < SPI_processed && added < limit; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		dlist_iter	iter;
		bool		held = false;
		Task	   *task;
		Datum		value;
		MemoryContext old;

		dlist_foreach(iter, &pool->held)
			if (dlist_container(Task, node, iter.cur)->id == id)
				held = true;
		if (held)
			continue;

		task = DispatcherNewTask(pool, id, SPI_getvalue(tup, desc, 2));
		value = SPI_getbinval(tup, desc, 3, &isnull);
		task->timeout = isnull ? 0 : TaskFdwIntervalUsecs(DatumGetIntervalP(value));
		task->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		task->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull)) + 1;
		value = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull)
		{
			Datum	   *elems;
			int			nelems;
			int			j;

			deconstruct_array(DatumGetArrayTypeP(value), TEXTOID, -1, false,
							  TYPALIGN_INT, &elems, NULL, &nelems);
			old = MemoryContextSwitchTo(task->cxt);
			for (j = 0; j < nelems; j++)
				task->retry_sqlstates = lappend(task->retry_sqlstates,
												TextDatumGetCString(elems[j]));
			MemoryContextSwitchTo(old);
		}
		value = SPI_getbinval(tup, desc, 7, &isnull);
		task->retry_delay = isnull ? USECS_PER_SEC :
			TaskFdwIntervalUsecs(DatumGetIntervalP(value));
		task->retry_interrupted = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
		task->submitted_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 9, &isnull));

		dlist_push_tail(&pool->held, &task->node);
		pool->nheld++;
		added++;
	}
	/* A short answer means the pool has no more runnable tasks for now. */
	pool->has_queued = (SPI_processed == (uint64) asked);
	SPI_freetuptable(SPI_tuptable);
}

/*
 * QueueRecordStart marks task running on its connection's remote backend and
 * returns false if the task is no longer queued and due, or is locked by a
 * submitter changing it.
 */
bool
QueueRecordStart(Task *task)
{
	Datum		values[4];

	task->started_at = GetCurrentTimestamp();
	values[0] = Int64GetDatum(task->id);
	values[1] = TimestampTzGetDatum(task->started_at);
	values[2] = Int32GetDatum(task->remote_pid);
	values[3] = Int32GetDatum(task->attempts);
	if (SPI_execute_plan(start_plan, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the start of task " INT64_FORMAT, task->id);
	return SPI_processed == 1;
}

/*
 * text_or_null returns s as a text Datum, or marks parameter i NULL.
 */
static Datum
text_or_null(const char *s, char *nulls, int i)
{
	if (s == NULL)
	{
		nulls[i] = 'n';
		return (Datum) 0;
	}
	return CStringGetTextDatum(s);
}

/*
 * text_array returns strings, a non-empty list of C strings, as a text[].
 */
static Datum
text_array(List *strings)
{
	Datum	   *elems = palloc(sizeof(Datum) * list_length(strings));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, strings)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * QueueRecordFinish records task's outcome (final, or a retry) and returns
 * true, or returns false when the task's row is locked by a submitter's
 * UPDATE or DELETE in progress: the caller tries again later.  A task whose
 * row is gone (deleted) counts as recorded.
 */
bool
QueueRecordFinish(Task *task)
{
	Datum		values[15];
	char		nulls[15];
	const char *state = TaskResolveOutcome(task);

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(task->id);
	values[1] = CStringGetTextDatum(state);
	values[2] = TimestampTzGetDatum(task->finished_at);
	values[3] = text_or_null(task->command_tag, nulls, 3);
	values[4] = Int64GetDatum(task->rows);
	if (!task->has_rows)
		nulls[4] = 'n';
	if (task->has_result)
	{
		values[5] = DirectFunctionCall1(jsonb_in, CStringGetDatum(task->result.data));
		values[6] = BoolGetDatum(task->truncated);
	}
	else
	{
		nulls[5] = 'n';
		nulls[6] = 'n';
	}
	values[7] = text_or_null(task->error, nulls, 7);
	values[8] = text_or_null(task->sqlstate, nulls, 8);
	values[9] = text_or_null(task->error_detail, nulls, 9);
	values[10] = text_or_null(task->error_hint, nulls, 10);
	values[11] = text_or_null(task->error_context, nulls, 11);
	values[12] = Int32GetDatum(task->attempts);
	values[13] = TimestampTzGetDatum(task->retry_at);
	if (task->retry_at == 0)
		nulls[13] = 'n';
	if (task->notices != NIL)
		values[14] = text_array(task->notices);
	else
		nulls[14] = 'n';

	if (SPI_execute_plan(finish_plan, values, nulls, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the outcome of task " INT64_FORMAT, task->id);
	if (SPI_processed == 1)
	{
		bool		isnull;
		char	   *recorded = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																 SPI_tuptable->tupdesc,
																 1, &isnull));

		if (strcmp(recorded, TFDW_STATE_QUEUED) != 0)
			TaskStoreNotifyFinished(task->id, recorded);
		SPI_freetuptable(SPI_tuptable);
		return true;
	}
	SPI_freetuptable(SPI_tuptable);

	/* No row updated: gone or final (done with it), or locked (try later). */
	if (SPI_execute_plan(pending_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look up task " INT64_FORMAT, task->id);
	return SPI_processed == 0;
}

/*
 * QueueCancelRequested returns which of the running tasks running_ids (a
 * list of int64 pointers) their submitters have cancelled or deleted since.
 */
List *
QueueCancelRequested(List *running_ids)
{
	Datum	   *elems = palloc(sizeof(Datum) * list_length(running_ids));
	Datum		values[1];
	ListCell   *lc;
	List	   *cancelled = NIL;
	uint64		i;
	int			n = 0;

	foreach(lc, running_ids)
		elems[n++] = Int64GetDatum(*(int64 *) lfirst(lc));
	values[0] = PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	if (SPI_execute_plan(cancelled_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for cancelled tasks");
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64	   *id = palloc(sizeof(int64));

		*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
										  1, &isnull));
		cancelled = lappend(cancelled, id);
	}
	SPI_freetuptable(SPI_tuptable);
	return cancelled;
}

/*
 * QueueNextRunAt returns when the next queued task scheduled after now
 * becomes due, or 0 if there is none.
 */
TimestampTz
QueueNextRunAt(TimestampTz now)
{
	Datum		values[1];
	TimestampTz next = 0;

	values[0] = TimestampTzGetDatum(now);
	if (SPI_execute_plan(next_run_at_plan, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look for scheduled tasks");
	if (SPI_processed == 1)
	{
		bool		isnull;

		next = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	return next;
}

/*
 * QueuePurge removes up to limit tasks that finished before cutoff, skipping
 * rows locked by others, and returns how many it removed.
 */
int
QueuePurge(TimestampTz cutoff, int limit)
{
	Datum		values[2];

	values[0] = TimestampTzGetDatum(cutoff);
	values[1] = Int32GetDatum(limit);
	if (SPI_execute_plan(purge_plan, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not remove expired tasks");
	return (int) SPI_processed;
}
