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
#include "utils/json.h"
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
 * Runnable tasks of one pool in queue order (highest priority first, then
 * oldest), after position ($5, $6) of that order: the rest of priority $5,
 * then lower priorities.  Each branch is a range scan of task_queued_idx,
 * so entries of tasks claimed earlier (dead, but not yet removable while an
 * older snapshot exists) are not visited again.  Nothing is locked here:
 * START_SQL checks again that a task is queued, and skips it while a
 * submitter is changing it.
 */
#define FETCH_COLUMNS \
	"SELECT id, sql, timeout, max_attempts, attempts, retry_sqlstates, retry_delay," \
	"       retry_interrupted, submitted_at, priority" \
	" FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued'" \
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

/*
 * Record the start of tasks $1 on remote backends $3, except those no longer
 * queued and due (cancelled, deleted or postponed) or locked by a submitter
 * changing them.  Returns the ids started.  The state test is a function
 * call so that the planner does not take it for task_queued_idx's predicate
 * and scan that index for each id.
 */
#define START_SQL \
	"UPDATE task_fdw.task t SET state = 'running', started_at = $2, remote_pid = u.pid," \
	" attempts = t.attempts OPERATOR(pg_catalog.+) 1" \
	" FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[])," \
	"   pg_catalog.unnest($3::pg_catalog.int4[])) AS u(id, pid)," \
	" LATERAL (SELECT c.id FROM task_fdw.task c" \
	"   WHERE c.id OPERATOR(pg_catalog.=) u.id AND pg_catalog.texteq(c.state, 'queued')" \
	"     AND (c.run_at IS NULL OR c.run_at OPERATOR(pg_catalog.<=) $2)" \
	"   FOR UPDATE SKIP LOCKED) s" \
	" WHERE t.id OPERATOR(pg_catalog.=) s.id" \
	" RETURNING t.id"

/*
 * Record the outcomes of tasks $1, one array element per task and column:
 * final, or queued again for a retry at $14 or, without $14, because the
 * task was never sent (which a cancel committed meanwhile turns into
 * cancelled).  A task queued again before its first attempt keeps no start.  Notices come as one JSON array of
 * strings per task.  Returns the id and state recorded of each task updated;
 * none for a task that is gone, final already, or locked.
 */
#define FINISH_SQL \
	"UPDATE task_fdw.task t SET state = s.state," \
	" finished_at = CASE WHEN s.state OPERATOR(pg_catalog.=) 'queued' THEN NULL ELSE u.finished_at END," \
	" run_at = CASE WHEN s.state OPERATOR(pg_catalog.=) 'queued' THEN COALESCE(u.retry_at, t.run_at)" \
	"          ELSE t.run_at END," \
	" started_at = CASE WHEN u.attempts OPERATOR(pg_catalog.=) 0 THEN NULL" \
	"              ELSE COALESCE(u.started_at, t.started_at) END," \
	" remote_pid = CASE WHEN u.attempts OPERATOR(pg_catalog.=) 0 THEN NULL ELSE t.remote_pid END," \
	" command_tag = u.command_tag, rows = u.rows, result = u.result," \
	" result_truncated = u.truncated, error = u.error, sqlstate = u.sqlstate," \
	" error_detail = u.detail, error_hint = u.hint, error_context = u.context," \
	" attempts = u.attempts," \
	" notices = CASE WHEN u.notices IS NULL THEN NULL ELSE" \
	"   ARRAY(SELECT pg_catalog.jsonb_array_elements_text(u.notices)) END" \
	" FROM ROWS FROM (" \
	"   pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[])," \
	"   pg_catalog.unnest($3::pg_catalog.timestamptz[]), pg_catalog.unnest($4::pg_catalog.text[])," \
	"   pg_catalog.unnest($5::pg_catalog.int8[]), pg_catalog.unnest($6::pg_catalog.jsonb[])," \
	"   pg_catalog.unnest($7::pg_catalog.bool[]), pg_catalog.unnest($8::pg_catalog.text[])," \
	"   pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.text[])," \
	"   pg_catalog.unnest($11::pg_catalog.text[]), pg_catalog.unnest($12::pg_catalog.text[])," \
	"   pg_catalog.unnest($13::pg_catalog.int4[]), pg_catalog.unnest($14::pg_catalog.timestamptz[])," \
	"   pg_catalog.unnest($15::pg_catalog.jsonb[]), pg_catalog.unnest($16::pg_catalog.timestamptz[]))" \
	"   AS u(id, state, finished_at, command_tag, rows, result, truncated, error," \
	"        sqlstate, detail, hint, context, attempts, retry_at, notices, started_at)," \
	" LATERAL (SELECT c.id, CASE WHEN u.state OPERATOR(pg_catalog.=) 'queued'" \
	"                          AND c.cancel_requested_at IS NOT NULL" \
	"                     THEN 'cancelled' ELSE u.state END AS state" \
	"   FROM task_fdw.task c" \
	"   WHERE c.id OPERATOR(pg_catalog.=) u.id" \
	"     AND c.state OPERATOR(pg_catalog.=) ANY ('{queued,running}'::pg_catalog.text[])" \
	"   FOR UPDATE SKIP LOCKED) s" \
	" WHERE t.id OPERATOR(pg_catalog.=) s.id" \
	" RETURNING t.id, s.state"

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
/* One array parameter of a statement, built element by element. */
typedef struct ArrayBuilder
{
	Datum	   *values;
	bool	   *nulls;
	int			n;
} ArrayBuilder;

static void array_builder_init(ArrayBuilder *b, int size);
static int	task_count(dlist_head *tasks);
static Task *find_task(dlist_head *tasks, int64 id);
static int64 id_of(uint64 i);
static void array_builder_add(ArrayBuilder *b, Datum value, bool isnull);
static void array_builder_text(ArrayBuilder *b, const char *s);
static Datum array_builder_finish(ArrayBuilder *b, Oid elemtype);


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
 * array_builder_text appends s as text, or a NULL if s is NULL, to b.
 */
static void
array_builder_text(ArrayBuilder *b, const char *s)
{
	array_builder_add(b, s ? CStringGetTextDatum(s) : (Datum) 0, s == NULL);
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
	Oid			start_types[3] = {INT8ARRAYOID, TIMESTAMPTZOID, INT4ARRAYOID};
	Oid			finish_types[16] = {INT8ARRAYOID, TEXTARRAYOID, TIMESTAMPTZARRAYOID,
		TEXTARRAYOID, INT8ARRAYOID, JSONBARRAYOID, BOOLARRAYOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
	TIMESTAMPTZARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID};
	Oid			id_type[1] = {INT8OID};
	Oid			ids_type[1] = {INT8ARRAYOID};
	Oid			time_type[1] = {TIMESTAMPTZOID};
	Oid			purge_types[2] = {TIMESTAMPTZOID, INT4OID};

	find_pools_plan = prepare_plan(FIND_POOLS_SQL, 0, NULL);
	fetch_plan = prepare_plan(FETCH_SQL, 6, fetch_types);
	start_plan = prepare_plan(START_SQL, 3, start_types);
	finish_plan = prepare_plan(FINISH_SQL, 16, finish_types);
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
 * QueueFetch takes up to limit more runnable tasks of pool, highest
 * priority first, into pool's held list, going on from where the last
 * fetch stopped.  Tasks already held are skipped.
 */
void
QueueFetch(Pool *pool, int limit, TimestampTz now)
{
	Datum		values[6];
	uint64		i;
	int			added = 0;
	int			asked = limit + pool->nheld;

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
		dlist_iter	iter;
		bool		held = false;
		Task	   *task;
		Datum		value;
		MemoryContext old;

		pool->cursor_valid = true;
		pool->cursor_priority = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		pool->cursor_id = id;
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
 * task_count returns the length of a list of tasks.
 */
static int
task_count(dlist_head *tasks)
{
	dlist_iter	iter;
	int			n = 0;

	dlist_foreach(iter, tasks)
		n++;
	return n;
}

/*
 * find_task returns the task of a list with the given id, which the caller
 * knows is there (the statement returned it).
 */
static Task *
find_task(dlist_head *tasks, int64 id)
{
	dlist_iter	iter;

	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		if (task->id == id)
			return task;
	}
	elog(ERROR, "task " INT64_FORMAT " was recorded but is not in hand", id);
	return NULL;				/* keep compiler quiet */
}

/*
 * QueueRecordStarts marks the tasks of the list running, each on its
 * connection's remote backend, in one statement, and sets task->recorded
 * on those it started.  The others are no longer queued and due, or are
 * locked by a submitter changing them.
 */
void
QueueRecordStarts(dlist_head *tasks)
{
	ArrayBuilder ids;
	ArrayBuilder pids;
	Datum		values[3];
	dlist_iter	iter;
	uint64		i;
	int			n = task_count(tasks);

	array_builder_init(&ids, n);
	array_builder_init(&pids, n);
	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);

		task->recorded = false;
		array_builder_add(&ids, Int64GetDatum(task->id), false);
		array_builder_add(&pids, Int32GetDatum(task->remote_pid), false);
	}
	values[0] = array_builder_finish(&ids, INT8OID);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = array_builder_finish(&pids, INT4OID);
	if (SPI_execute_plan(start_plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the start of tasks");
	for (i = 0; i < SPI_processed; i++)
		find_task(tasks, id_of(i))->recorded = true;
	SPI_freetuptable(SPI_tuptable);
}

/*
 * notices_json returns a task's notices as a JSON array of strings.
 */
static Datum
notices_json(List *notices)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	foreach(lc, notices)
	{
		if (buf.len > 1)
			appendStringInfoChar(&buf, ',');
		escape_json(&buf, (char *) lfirst(lc));
	}
	appendStringInfoChar(&buf, ']');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

/*
 * QueueRecordFinishes records the outcomes (final, or a retry) of the tasks
 * of the list in one statement, and sets task->recorded on each one that
 * needs no more recording: recorded now, or gone (deleted).  A task whose
 * row a submitter's UPDATE or DELETE in progress has locked is left
 * unrecorded, for the caller to try again later.
 */
void
QueueRecordFinishes(dlist_head *tasks)
{
	ArrayBuilder cols[16];
	Datum		values[16];
	Oid			types[16] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID, INT8OID,
		JSONBOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, JSONBOID, TIMESTAMPTZOID};
	dlist_iter	iter;
	uint64		i;
	int			c;
	int			n = task_count(tasks);

	for (c = 0; c < 16; c++)
		array_builder_init(&cols[c], n);
	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);
		const char *state = TaskResolveOutcome(task);

		task->recorded = false;
		array_builder_add(&cols[0], Int64GetDatum(task->id), false);
		array_builder_text(&cols[1], state);
		array_builder_add(&cols[2], TimestampTzGetDatum(task->finished_at), false);
		array_builder_text(&cols[3], task->command_tag);
		array_builder_add(&cols[4], Int64GetDatum(task->rows), !task->has_rows);
		if (task->has_result)
		{
			array_builder_add(&cols[5], DirectFunctionCall1(jsonb_in,
															CStringGetDatum(task->result.data)),
							  false);
			array_builder_add(&cols[6], BoolGetDatum(task->truncated), false);
		}
		else
		{
			array_builder_add(&cols[5], (Datum) 0, true);
			array_builder_add(&cols[6], (Datum) 0, true);
		}
		array_builder_text(&cols[7], task->error);
		array_builder_text(&cols[8], task->sqlstate);
		array_builder_text(&cols[9], task->error_detail);
		array_builder_text(&cols[10], task->error_hint);
		array_builder_text(&cols[11], task->error_context);
		array_builder_add(&cols[12], Int32GetDatum(task->attempts), false);
		array_builder_add(&cols[13], TimestampTzGetDatum(task->retry_at), task->retry_at == 0);
		array_builder_add(&cols[14], task->notices != NIL ? notices_json(task->notices) : (Datum) 0,
						  task->notices == NIL);
		array_builder_add(&cols[15], TimestampTzGetDatum(task->started_at),
						  task->started_at == 0);
	}
	for (c = 0; c < 16; c++)
		values[c] = array_builder_finish(&cols[c], types[c]);

	if (SPI_execute_plan(finish_plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not record the outcome of tasks");
	for (i = 0; i < SPI_processed; i++)
	{
		Task	   *task = find_task(tasks, id_of(i));
		bool		isnull;
		char	   *recorded = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc,
																 2, &isnull));

		task->recorded = true;
		if (strcmp(recorded, TFDW_STATE_QUEUED) != 0)
			TaskStoreNotifyFinished(task->id, recorded);
	}
	SPI_freetuptable(SPI_tuptable);

	/* Not updated: gone or final (done with it), or locked (try later). */
	dlist_foreach(iter, tasks)
	{
		Task	   *task = dlist_container(Task, node, iter.cur);
		Datum		id[1];

		if (task->recorded)
			continue;
		id[0] = Int64GetDatum(task->id);
		if (SPI_execute_plan(pending_plan, id, NULL, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not look up task " INT64_FORMAT, task->id);
		task->recorded = (SPI_processed == 0);
	}
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
