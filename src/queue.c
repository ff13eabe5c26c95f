/*-------------------------------------------------------------------------
 *
 * queue.c
 *		  The dispatcher's bookkeeping in the task store: finding and claiming
 *		  queued tasks, and recording starts and outcomes.
 *
 * All of it runs in one short transaction per turn of the event loop
 * (QueueBegin ... QueueCommit), never across a wait.  Searches go through
 * prepared SPI plans; starts and outcomes, two row updates per task and the
 * bulk of the dispatcher's work, are written straight into the heap and its
 * indexes, as submitters' inserts are.  A start changes no indexed column,
 * so it is a HOT update where its page has room (the store's fillfactor
 * leaves half of each page for it): no index entry.  A task's start is
 * committed before its SQL is sent, so a task is never sent twice: after a
 * crash, a task still marked running is failed as interrupted rather than
 * run again.
 *
 * Submitters lock task rows while they cancel, reschedule or delete them.
 * The dispatcher never waits for those locks: a row that is locked, or was
 * changed since the turn's snapshot, is not written, and an outcome that
 * cannot be recorded yet is kept and recorded on a later turn.  Completion
 * notifications are sent in the same transaction that records the outcome.
 *
 * IDENTIFICATION
 *		  src/queue.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "dispatcher.h"
#include "compat.h"

/*
 * Every search for queued or running tasks also says "finished_at IS NULL",
 * the predicate of the index they are in (task_unfinished_idx; before 1.4,
 * task_queued_idx and task_state_idx, whose predicates "state = ..."
 * implies).
 */

/* Pools with queued tasks: a loose index scan over task_unfinished_idx. */
#define FIND_POOLS_SQL \
	"WITH RECURSIVE p(server_id, userid) AS (" \
	" (SELECT server_id, userid FROM task_fdw.task" \
	"   WHERE state OPERATOR(pg_catalog.=) 'queued' AND finished_at IS NULL" \
	"   ORDER BY server_id, userid LIMIT 1)" \
	" UNION ALL" \
	" SELECT n.server_id, n.userid FROM p, LATERAL" \
	" (SELECT t.server_id, t.userid FROM task_fdw.task t" \
	"   WHERE t.state OPERATOR(pg_catalog.=) 'queued' AND t.finished_at IS NULL" \
	"     AND (t.server_id, t.userid) OPERATOR(pg_catalog.>) (p.server_id, p.userid)" \
	"   ORDER BY t.server_id, t.userid LIMIT 1) n)" \
	" SELECT server_id, userid FROM p"

/*
 * Runnable tasks of one pool in queue order (highest priority first, then
 * oldest), after position ($5, $6) of that order: the rest of priority $5,
 * then lower priorities.  Each branch is a range scan of
 * task_unfinished_idx, so entries of tasks claimed earlier (running, or
 * dead but not yet removable while an older snapshot exists) are not
 * visited again.  Nothing is locked here:
 * QueueRecordStarts checks again that a task is queued, and skips it while
 * a submitter is changing it.
 */
#define FETCH_COLUMNS \
	"SELECT id, sql, timeout, max_attempts, attempts, retry_sqlstates, retry_delay," \
	"       retry_interrupted, submitted_at, priority, ctid" \
	" FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued' AND finished_at IS NULL" \
	"   AND server_id OPERATOR(pg_catalog.=) $1" \
	"   AND userid OPERATOR(pg_catalog.=) $2" \
	"   AND (run_at IS NULL OR run_at OPERATOR(pg_catalog.<=) $4)"
#define FETCH_SQL \
	"(" FETCH_COLUMNS \
	"   AND priority OPERATOR(pg_catalog.=) $5 AND id OPERATOR(pg_catalog.>) $6" \
	" ORDER BY id LIMIT $3)" \
	" UNION ALL" \
	" (" FETCH_COLUMNS \
	"   AND priority OPERATOR(pg_catalog.<) $5" \
	" ORDER BY priority DESC, id LIMIT $3)" \
	" LIMIT $3"

/* Of the running tasks $1, those whose submitter cancelled or deleted them. */
#define CANCELLED_SQL \
	"SELECT r.id FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS r(id)" \
	" WHERE NOT EXISTS (SELECT FROM task_fdw.task t" \
	"   WHERE t.id OPERATOR(pg_catalog.=) r.id AND t.cancel_requested_at IS NULL)"

/* The next time a queued task scheduled for later becomes due. */
#define NEXT_RUN_AT_SQL \
	"SELECT run_at FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued' AND finished_at IS NULL AND run_at IS NOT NULL" \
	"   AND run_at OPERATOR(pg_catalog.>) $1" \
	" ORDER BY run_at LIMIT 1"

/* Retention: remove a batch of tasks that finished before $1. */
#define PURGE_SQL \
	"DELETE FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY(" \
	" SELECT id FROM task_fdw.task" \
	"  WHERE state OPERATOR(pg_catalog.=) ANY ('{done,failed,cancelled}'::pg_catalog.text[])" \
	"    AND finished_at OPERATOR(pg_catalog.<) $1" \
	"  ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED))"

/* The tasks an earlier dispatcher left running, when this one starts. */
#define ORPHANS_SQL \
	"SELECT pg_catalog.array_agg(id) FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'running' AND finished_at IS NULL"

/*
 * Tasks an earlier dispatcher left running (those of $1) were interrupted
 * by a crash: failed, or queued again if their submitter said they may run
 * twice (and did not cancel them meanwhile) and they have attempts left
 * (fewer than $2, task_fdw.max_interrupted_attempts, or than max_attempts,
 * as TaskResolveOutcome decides for the tasks a running dispatcher sees
 * interrupted; a task failed for want of them gets hint $3).  Like the
 * outcome of any attempt, the row then holds nothing of an earlier
 * attempt's output (its notices, say, recorded with a retry).  Rows that a
 * submitter's open transaction has locked are left for later.  Returns how
 * many tasks were failed and queued again, and the ids of those left: still
 * running, and locked.
 */
#define RECOVER_SQL \
	"WITH recovered AS (UPDATE task_fdw.task t SET" \
	" state = CASE WHEN o.retry AND o.attempts_left THEN 'queued' ELSE 'failed' END," \
	" finished_at = CASE WHEN o.retry AND o.attempts_left THEN NULL ELSE pg_catalog.now() END," \
	" sqlstate = '57P02', error = 'task was interrupted: the dispatcher stopped" \
	" while it ran, and the remote server may or may not have completed it'," \
	" error_detail = NULL, error_context = NULL, command_tag = NULL, rows = NULL," \
	" result = NULL, result_truncated = NULL, notices = NULL," \
	" error_hint = CASE WHEN o.retry AND NOT o.attempts_left THEN $3 END" \
	" FROM (SELECT id, retry_interrupted AND cancel_requested_at IS NULL AS retry," \
	"         attempts OPERATOR(pg_catalog.<) pg_catalog.int4larger(max_attempts, $2) AS attempts_left" \
	"       FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) ANY ($1)" \
	"        AND state OPERATOR(pg_catalog.=) 'running' FOR UPDATE SKIP LOCKED) o" \
	" WHERE t.id OPERATOR(pg_catalog.=) o.id" \
	" RETURNING t.id, t.state)" \
	" SELECT pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'failed')::pg_catalog.int4," \
	"        pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'queued')::pg_catalog.int4," \
	"        ARRAY(SELECT id FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) ANY ($1)" \
	"               AND state OPERATOR(pg_catalog.=) 'running'" \
	"               AND id OPERATOR(pg_catalog.<>) ALL (ARRAY(SELECT id FROM recovered)))" \
	"   FROM recovered"

static SPIPlanPtr find_pools_plan = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr cancelled_plan = NULL;
static SPIPlanPtr next_run_at_plan = NULL;
static SPIPlanPtr purge_plan = NULL;
static SPIPlanPtr recover_plan = NULL;

/* Ids of the tasks an earlier dispatcher left running, not recorded yet. */
static ArrayType *orphans = NULL;

static SPIPlanPtr prepare_plan(const char *sql, int nargs, Oid *argtypes);
static ArrayType *keep_array(Datum ids);
/* One array parameter of a statement, built element by element. */
typedef struct ArrayBuilder
{
	Datum	   *values;
	bool	   *nulls;
	int			n;
} ArrayBuilder;

static void array_builder_init(ArrayBuilder *b, int size);
static int64 id_of(uint64 i);
static int64 *held_ids_sorted(Pool *pool);
static int	cmp_int64(const void *a, const void *b);
static void array_builder_add(ArrayBuilder *b, Datum value, bool isnull);
static Datum array_builder_finish(ArrayBuilder *b, Oid elemtype);


/* The memory context QueueBegin was called in, restored by QueueCommit. */
static MemoryContext caller_cxt = NULL;

/*
 * QueueBegin starts a dispatcher transaction with SPI and a snapshot, and
 * takes the task store's lock for writing.  With nowait, it does not wait
 * for that lock: if another transaction holds a conflicting one (DDL on the
 * store, DROP EXTENSION), it ends the transaction and returns QUEUE_BUSY.
 * It returns QUEUE_GONE, also without a transaction, if the extension is no
 * longer installed, or was dropped while the lock was being taken.
 */
QueueStatus
QueueBegin(bool nowait)
{
	Oid			relid;
	Relation	rel;
	bool		busy;
	bool		current;

	caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	relid = TaskStoreLock(RowExclusiveLock, nowait, &busy);
	if (!OidIsValid(relid))
	{
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller_cxt);
		return busy ? QUEUE_BUSY : QUEUE_GONE;
	}
	rel = relation_open(relid, NoLock);
	current = TaskStoreIsCurrent(rel);
	relation_close(rel, NoLock);
	if (!current)
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
 * array_builder_init starts an array of at most size elements.
 */
static void
array_builder_init(ArrayBuilder *b, int size)
{
	b->values = palloc(sizeof(Datum) * Max(size, 1));
	b->nulls = palloc(sizeof(bool) * Max(size, 1));
	b->n = 0;
}

/*
 * array_builder_add appends value, or a NULL, to b.
 */
static void
array_builder_add(ArrayBuilder *b, Datum value, bool isnull)
{
	b->values[b->n] = value;
	b->nulls[b->n] = isnull;
	b->n++;
}

/*
 * array_builder_finish returns b's elements, of type elemtype, as an array.
 */
static Datum
array_builder_finish(ArrayBuilder *b, Oid elemtype)
{
	int			dims[1] = {b->n};
	int			lbs[1] = {1};
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(b->values, b->nulls, 1, dims, lbs,
											  elemtype, typlen, typbyval, typalign));
}

/*
 * prepare_plan prepares sql and keeps the plan for the life of the process.
 * The plan is generic from the first execution on: every statement is
 * written for index scans whatever its parameters, and planning them again
 * for each execution would cost more than running them.
 */
static SPIPlanPtr
prepare_plan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);

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
	Oid			fetch_types[6] = {OIDOID, OIDOID, INT4OID, TIMESTAMPTZOID, INT4OID,
	INT8OID};
	Oid			ids_type[1] = {INT8ARRAYOID};
	Oid			time_type[1] = {TIMESTAMPTZOID};
	Oid			purge_types[2] = {TIMESTAMPTZOID, INT4OID};
	Oid			recover_types[3] = {INT8ARRAYOID, INT4OID, TEXTOID};

	find_pools_plan = prepare_plan(FIND_POOLS_SQL, 0, NULL);
	fetch_plan = prepare_plan(FETCH_SQL, 6, fetch_types);
	cancelled_plan = prepare_plan(CANCELLED_SQL, 1, ids_type);
	next_run_at_plan = prepare_plan(NEXT_RUN_AT_SQL, 1, time_type);
	purge_plan = prepare_plan(PURGE_SQL, 2, purge_types);
	recover_plan = prepare_plan(RECOVER_SQL, 3, recover_types);
}

/*
 * QueueFindOrphans notes the tasks an earlier dispatcher left running, for
 * QueueRecoverOrphans to record as interrupted.  Called once, when the
 * dispatcher starts, before it starts any task itself.
 */
void
QueueFindOrphans(void)
{
	bool		isnull;
	Datum		ids;

	if (SPI_execute(ORPHANS_SQL, true, 0) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not find interrupted tasks");
	ids = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		orphans = keep_array(ids);
}

/*
 * QueueRecoverOrphans records as interrupted the tasks noted by
 * QueueFindOrphans that no other transaction has locked, and sets *failed
 * and *requeued to how many it recorded as failed and queued again, and
 * *locked to how many it left for a later call.  Returns false, with
 * nothing done, if none is left.
 */
bool
QueueRecoverOrphans(int *failed, int *requeued, int *locked)
{
	Datum		values[3];
	Datum		left;
	bool		isnull;
	ArrayType  *remaining;

	if (orphans == NULL)
		return false;
	values[0] = PointerGetDatum(orphans);
	values[1] = Int32GetDatum(TaskFdwMaxInterruptedAttempts);
	values[2] = CStringGetTextDatum(TFDW_INTERRUPTED_HINT);
	if (SPI_execute_plan(recover_plan, values, NULL, false, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not recover interrupted tasks");
	*failed = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	*requeued = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 2, &isnull));
	left = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	remaining = DatumGetArrayTypeP(left);
	*locked = ArrayGetNItems(ARR_NDIM(remaining), ARR_DIMS(remaining));
	pfree(orphans);
	orphans = NULL;
	if (*locked > 0)
		orphans = keep_array(left);
	return true;
}

/*
 * keep_array returns a copy of the array ids that lasts as long as the
 * process.
 */
static ArrayType *
keep_array(Datum ids)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	ArrayType  *copy = DatumGetArrayTypePCopy(ids);

	MemoryContextSwitchTo(old);
	return copy;
}

/*
 * QueueFindPools notes every pool that has queued tasks, and has every
 * pool's next fetch start from the head of its queue.
 */
void
QueueFindPools(void)
{
	uint64		i;
	HASH_SEQ_STATUS status;
	Pool	   *pool;

	/* The queue may have changed anywhere: fetches start from its head. */
	hash_seq_init(&status, PoolTable());
	while ((pool = hash_seq_search(&status)) != NULL)
		pool->cursor_valid = false;
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
 * held_ids_sorted returns the ids of the tasks pool holds, in ascending
 * order, for QueueFetch to skip them with a binary search rather than a walk
 * of the held list per row; NULL if it holds none.
 */
static int64 *
held_ids_sorted(Pool *pool)
{
	int64	   *ids;
	int			n = 0;
	dlist_iter	iter;

	if (pool->nheld == 0)
		return NULL;
	ids = palloc(sizeof(int64) * pool->nheld);
	dlist_foreach(iter, &pool->held)
		ids[n++] = dlist_container(Task, node, iter.cur)->id;
	qsort(ids, n, sizeof(int64), cmp_int64);
	return ids;
}

/*
 * cmp_int64 orders two int64 values, for qsort and bsearch.
 */
static int
cmp_int64(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

/*
 * QueueFetch takes up to limit more runnable tasks of pool, highest
 * priority first, into pool's held list, going on from where the last
 * fetch stopped.  Tasks already held are skipped.  They come again when
 * the read starts from the head of the queue, so then it asks for that
 * many rows more; and, rarely, with the cursor valid, when a submitter
 * lowered a held task's priority after this turn took its hints (the hint
 * makes the next turn start from the head), so they are looked for in
 * every read.
 */
void
QueueFetch(Pool *pool, int limit, TimestampTz now)
{
	Datum		values[6];
	uint64		i;
	int			added = 0;
	int			asked = limit + (pool->cursor_valid ? 0 : pool->nheld);
	int			nheld = pool->nheld;
	int64	   *held_ids = held_ids_sorted(pool);

	values[0] = ObjectIdGetDatum(pool->key.serverid);
	values[1] = ObjectIdGetDatum(pool->key.userid);
	values[2] = Int32GetDatum(asked);
	values[3] = TimestampTzGetDatum(now);
	values[4] = Int32GetDatum(pool->cursor_valid ? pool->cursor_priority : PG_INT32_MAX);
	values[5] = Int64GetDatum(pool->cursor_valid ? pool->cursor_id : 0);
	if (SPI_execute_plan(fetch_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not fetch queued tasks");

	for (i = 0; i < SPI_processed && added < limit; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		Task	   *task;
		Datum		value;
		MemoryContext old;

		pool->cursor_valid = true;
		pool->cursor_priority = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		pool->cursor_id = id;
		if (nheld > 0 &&
			bsearch(&id, held_ids, nheld, sizeof(int64), cmp_int64) != NULL)
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
		task->row_tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 11, &isnull));

		dlist_push_tail(&pool->held, &task->node);
		pool->nheld++;
		added++;
	}
	/*
	 * A short answer, all of it taken, means the pool has no more runnable
	 * tasks for now.  (A held task may have left the queue, so an answer
	 * from the head can be short and still hold rows beyond limit.)
	 */
	pool->has_queued = (SPI_processed == (uint64) asked || i < SPI_processed);
	SPI_freetuptable(SPI_tuptable);
	if (held_ids != NULL)
		pfree(held_ids);
}

/*
 * id_of returns the int64 in column 1 of row i of the last SPI result.
 */
static int64
id_of(uint64 i)
{
	bool		isnull;

	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc,
									   1, &isnull));
}

/*
 * The task store open for writing task rows directly: one per call of
 * QueueRecordStarts or QueueRecordFinishes.
 */
typedef struct RowWriter
{
	Relation	rel;
	ResultRelInfo *rri;
	EState	   *estate;
	Snapshot	snapshot;		/* the latest, registered */
	IndexScanDesc scan;			/* over the primary key */
	TupleTableSlot *oldslot;	/* the row found */
	TupleTableSlot *newslot;	/* its new version */
} RowWriter;

/* What became of a row update. */
typedef enum RowWrite
{
	ROW_WRITTEN,
	ROW_GONE,					/* no such task (deleted) */
	ROW_BUSY					/* locked, or changed since the snapshot */
} RowWrite;

/*
 * writer_begin opens the task store, its indexes and a scan of its primary
 * key (one of those indexes), with the latest snapshot, which also sees
 * this turn's earlier writes.
 */
static void
writer_begin(RowWriter *w)
{
	Relation	pkey = NULL;
	int			i;

	CommandCounterIncrement();
	w->rri = TaskStoreOpenForWriting();
	w->rel = w->rri->ri_RelationDesc;
	w->estate = CreateExecutorState();
	w->snapshot = RegisterSnapshot(GetLatestSnapshot());
	for (i = 0; i < w->rri->ri_NumIndices; i++)
		if (w->rri->ri_IndexRelationDescs[i]->rd_index->indisprimary)
			pkey = w->rri->ri_IndexRelationDescs[i];
	if (pkey == NULL)
		elog(ERROR, "the primary key of the task store is missing");
	w->scan = index_beginscan(w->rel, pkey, w->snapshot, 1, 0);
	w->oldslot = table_slot_create(w->rel, NULL);
	w->newslot = table_slot_create(w->rel, NULL);
}

/*
 * writer_end closes what writer_begin opened.
 */
static void
writer_end(RowWriter *w)
{
	index_endscan(w->scan);
	ExecDropSingleTupleTableSlot(w->oldslot);
	ExecDropSingleTupleTableSlot(w->newslot);
	UnregisterSnapshot(w->snapshot);
	FreeExecutorState(w->estate);
	TaskStoreCloseForWriting(w->rri);
}

/*
 * writer_find reads task's row into w->oldslot, all its columns deformed,
 * and returns false if there is no such task.  The row version the
 * dispatcher last read or wrote is tried first, by its TID, and is used if
 * the snapshot still sees it (no one changed the row since) and it still
 * holds this task; otherwise the primary key finds the row.
 */
static bool
writer_find(RowWriter *w, Task *task)
{
	ScanKeyData key;

	if (ItemPointerIsValid(&task->row_tid) &&
		table_tuple_fetch_row_version(w->rel, &task->row_tid, w->snapshot, w->oldslot))
	{
		slot_getallattrs(w->oldslot);
		if (DatumGetInt64(w->oldslot->tts_values[Anum_task_id - 1]) == task->id)
			return true;
	}
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(task->id));
	index_rescan(w->scan, &key, 1, NULL, 0);
	if (!index_getnext_slot(w->scan, ForwardScanDirection, w->oldslot))
		return false;
	slot_getallattrs(w->oldslot);
	return true;
}

/*
 * writer_state_is returns whether the row found is in state name.
 */
static bool
writer_state_is(RowWriter *w, const char *name)
{
	return TaskStateIs(w->oldslot->tts_values[Anum_task_state - 1], name);
}

/*
 * writer_prepare starts the new version of the row found as a copy of it,
 * for the caller to change columns of with SET_COLUMN / SET_NULL.
 */
static void
writer_prepare(RowWriter *w)
{
	TupleTableSlot *slot = w->newslot;

	ExecClearTuple(slot);
	memcpy(slot->tts_values, w->oldslot->tts_values, sizeof(Datum) * Natts_task);
	memcpy(slot->tts_isnull, w->oldslot->tts_isnull, sizeof(bool) * Natts_task);
}

#define SET_COLUMN(w, anum, datum) \
	((w)->newslot->tts_values[(anum) - 1] = (datum), \
	 (w)->newslot->tts_isnull[(anum) - 1] = false)
#define SET_NULL(w, anum) \
	((w)->newslot->tts_isnull[(anum) - 1] = true)

/*
 * writer_update replaces the row found by its new version, and its index
 * entries unless the update is HOT, without waiting for a lock: a row
 * locked by a submitter, or changed by one since the snapshot, is left as
 * it is (ROW_BUSY), and one deleted meanwhile is ROW_GONE.
 */
static RowWrite
writer_update(RowWriter *w)
{
	TM_FailureData tmfd;
	bool		new_index_entries;
	TM_Result	result;

	ExecStoreVirtualTuple(w->newslot);
	result = tfdw_tuple_update(w->rel, &w->oldslot->tts_tid, w->newslot,
							   w->snapshot, &tmfd, &new_index_entries);
	switch (result)
	{
		case TM_Ok:
			if (new_index_entries)
				(void) tfdw_insert_index_tuples(w->rri, w->newslot, w->estate);
			return ROW_WRITTEN;
		case TM_Deleted:
			return ROW_GONE;
		case TM_Updated:
		case TM_BeingModified:
			return ROW_BUSY;
		default:
			elog(ERROR, "unexpected result %d updating a task", (int) result);
	}
	return ROW_BUSY;			/* keep compiler quiet */
}

/*
 * QueueRecordStarts marks the tasks of the list running, each on its
 * connection's remote backend, and sets task->recorded on those it
 * started.  The others are no longer queued and due (cancelled, deleted or
 * postponed), or are locked by a submitter changing them.
 */
void
QueueRecordStarts(dlist_head *tasks)
{
	RowWriter	w;
	dlist_iter	iter;
	TimestampTz now = GetCurrentTimestamp();

	writer_begin(&w);
	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		task->recorded = false;
		if (!writer_find(&w, task))
			continue;
		if (!writer_state_is(&w, TFDW_STATE_QUEUED) ||
			(!w.oldslot->tts_isnull[Anum_task_run_at - 1] &&
			 DatumGetTimestampTz(w.oldslot->tts_values[Anum_task_run_at - 1]) > now))
			continue;
		writer_prepare(&w);
		SET_COLUMN(&w, Anum_task_state, CStringGetTextDatum(TFDW_STATE_RUNNING));
		SET_COLUMN(&w, Anum_task_started_at, TimestampTzGetDatum(now));
		SET_COLUMN(&w, Anum_task_remote_pid, Int32GetDatum(task->remote_pid));
		SET_COLUMN(&w, Anum_task_attempts,
				   Int32GetDatum(DatumGetInt32(w.oldslot->tts_values[Anum_task_attempts - 1]) + 1));
		task->recorded = (writer_update(&w) == ROW_WRITTEN);
		if (task->recorded)
			task->row_tid = w.newslot->tts_tid;
	}
	writer_end(&w);
}

/*
 * text_column sets column anum of w's new row version to s, or NULL.
 */
static void
text_column(RowWriter *w, int anum, const char *s)
{
	if (s == NULL)
		SET_NULL(w, anum);
	else
		SET_COLUMN(w, anum, CStringGetTextDatum(s));
}

/*
 * notices_array returns a task's notices as a text array.
 */
static Datum
notices_array(List *notices)
{
	ArrayBuilder b;
	ListCell   *lc;

	array_builder_init(&b, list_length(notices));
	foreach(lc, notices)
		array_builder_add(&b, CStringGetTextDatum((char *) lfirst(lc)), false);
	return array_builder_finish(&b, TEXTOID);
}

/*
 * Results of JSON text this large may exceed what jsonb can hold (its
 * binary form can be several times larger), so they are converted in a
 * subtransaction.
 */
#define JSONB_SAFE_BYTES	(16 * 1024 * 1024)

/*
 * result_jsonb converts task's result to jsonb into *result and returns
 * true.  The JSON text task_exec.c builds always converts, unless it embeds
 * json values the remote sent, which can hold what jsonb cannot (a \u0000
 * escape, a lone surrogate, a number beyond numeric's range), or is larger
 * than JSONB_SAFE_BYTES: then the conversion runs in a subtransaction, and
 * if it fails the result is not kept, a message among the task's notices
 * says why, and false is returned.  An error here must not end the
 * dispatcher, and with it every running task.
 */
static bool
result_jsonb(Task *task, Datum *result)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool converted = false;

	if (!task->result_has_json && task->result.len <= JSONB_SAFE_BYTES)
	{
		*result = DirectFunctionCall1(jsonb_in, CStringGetDatum(task->result.data));
		return true;
	}
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		*result = DirectFunctionCall1(jsonb_in, CStringGetDatum(task->result.data));
		ReleaseCurrentSubTransaction();
		converted = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(task->cxt);
		task->notices = lappend(task->notices,
								psprintf("task_fdw: the result was not kept: %s", edata->message));
		FreeErrorData(edata);
		/* Recorded once, even if the row must be written again later. */
		task->has_result = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return converted;
}

/*
 * record_outcome writes what task's outcome is, state, into its row found
 * by w: final, or queued again for a retry at task->retry_at or, without
 * one, because the task was never sent, which a cancel committed meanwhile
 * turns into cancelled.  A task queued again before its first attempt
 * keeps no start.  One cancelled before it ever ran gets the error and
 * sqlstate a submitter's cancel of a queued task gives (task_failed_idx
 * holds the failed and cancelled tasks by their sqlstate).  Sets *written
 * to the state written.
 */
static RowWrite
record_outcome(RowWriter *w, Task *task, const char *state, const char **written)
{
	bool		queued;
	Datum		result;

	if (strcmp(state, TFDW_STATE_QUEUED) == 0 &&
		!w->oldslot->tts_isnull[Anum_task_cancel_requested_at - 1])
		state = TFDW_STATE_CANCELLED;
	queued = (strcmp(state, TFDW_STATE_QUEUED) == 0);
	if (strcmp(state, TFDW_STATE_CANCELLED) == 0 && task->sqlstate == NULL)
	{
		task->sqlstate = MemoryContextStrdup(task->cxt, "57014");
		task->error = MemoryContextStrdup(task->cxt, TFDW_CANCELLED_BEFORE_START);
	}

	writer_prepare(w);
	SET_COLUMN(w, Anum_task_state, CStringGetTextDatum(state));
	if (queued)
	{
		SET_NULL(w, Anum_task_finished_at);
		if (task->retry_at != 0)
			SET_COLUMN(w, Anum_task_run_at, TimestampTzGetDatum(task->retry_at));
	}
	else
		SET_COLUMN(w, Anum_task_finished_at, TimestampTzGetDatum(task->finished_at));
	if (task->attempts == 0)
	{
		SET_NULL(w, Anum_task_started_at);
		SET_NULL(w, Anum_task_remote_pid);
	}
	else if (task->started_at != 0)
		SET_COLUMN(w, Anum_task_started_at, TimestampTzGetDatum(task->started_at));
	text_column(w, Anum_task_command_tag, task->command_tag);
	if (task->has_rows)
		SET_COLUMN(w, Anum_task_rows, Int64GetDatum(task->rows));
	else
		SET_NULL(w, Anum_task_rows);
	if (task->has_result && result_jsonb(task, &result))
	{
		SET_COLUMN(w, Anum_task_result, result);
		SET_COLUMN(w, Anum_task_result_truncated, BoolGetDatum(task->truncated));
	}
	else
	{
		SET_NULL(w, Anum_task_result);
		SET_NULL(w, Anum_task_result_truncated);
	}
	text_column(w, Anum_task_error, task->error);
	text_column(w, Anum_task_sqlstate, task->sqlstate);
	text_column(w, Anum_task_error_detail, task->error_detail);
	text_column(w, Anum_task_error_hint, task->error_hint);
	text_column(w, Anum_task_error_context, task->error_context);
	SET_COLUMN(w, Anum_task_attempts, Int32GetDatum(task->attempts));
	if (task->notices != NIL)
		SET_COLUMN(w, Anum_task_notices, notices_array(task->notices));
	else
		SET_NULL(w, Anum_task_notices);

	*written = state;
	return writer_update(w);
}

/*
 * QueueRecordFinishes records the outcomes (final, or a retry) of the tasks
 * of the list, and sets task->recorded on each one that needs no more
 * recording: recorded now, or gone (deleted), or final already.  A task
 * whose row a submitter's UPDATE or DELETE in progress has locked is left
 * unrecorded, for the caller to try again later.  Each final outcome sends
 * its completion notification at commit, if the notification queue has
 * room.
 */
void
QueueRecordFinishes(dlist_head *tasks)
{
	RowWriter	w;
	dlist_iter	iter;

	writer_begin(&w);
	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);
		const char *state = TaskResolveOutcome(task);
		const char *written;

		task->recorded = true;
		if (!writer_find(&w, task))
			continue;			/* deleted */
		if (!writer_state_is(&w, TFDW_STATE_QUEUED) &&
			!writer_state_is(&w, TFDW_STATE_RUNNING))
			continue;			/* final already */
		switch (record_outcome(&w, task, state, &written))
		{
			case ROW_WRITTEN:
				task->row_tid = w.newslot->tts_tid;
				if (strcmp(written, TFDW_STATE_QUEUED) != 0)
					TaskStoreNotifyFinished(task->id, written);
				break;
			case ROW_GONE:
				break;
			case ROW_BUSY:
				task->recorded = false;
				break;
		}
	}
	writer_end(&w);
}

/*
 * QueueMarkCancelled marks the tasks of running (a list of running tasks)
 * that their submitters have cancelled or deleted since, and that were not
 * being cancelled already, so that their cancel requests are sent at once.
 */
void
QueueMarkCancelled(List *running)
{
	ArrayBuilder ids;
	Datum		values[1];
	ListCell   *lc;
	uint64		i;

	if (running == NIL)
		return;
	array_builder_init(&ids, list_length(running));
	foreach(lc, running)
		array_builder_add(&ids, Int64GetDatum(((Task *) lfirst(lc))->id), false);
	values[0] = array_builder_finish(&ids, INT8OID);
	if (SPI_execute_plan(cancelled_plan, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for cancelled tasks");
	for (i = 0; i < SPI_processed; i++)
	{
		int64		id = id_of(i);

		foreach(lc, running)
		{
			Task	   *task = lfirst(lc);

			if (task->id != id || task->cancel_reason != TASK_CANCEL_NONE)
				continue;
			task->cancel_reason = TASK_CANCEL_USER;
			task->cancel_at = GetCurrentTimestamp();
		}
	}
	SPI_freetuptable(SPI_tuptable);
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
