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
 * IDENTIFICATION
 *		  src/queue.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
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

#define FETCH_SQL \
	"SELECT id, sql FROM task_fdw.task" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued'" \
	"   AND server_id OPERATOR(pg_catalog.=) $1" \
	"   AND userid OPERATOR(pg_catalog.=) $2" \
	" ORDER BY id LIMIT $3"

#define START_SQL \
	"UPDATE task_fdw.task SET state = 'running', started_at = $2, remote_pid = $3" \
	" WHERE id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'queued'"

#define FINISH_SQL \
	"UPDATE task_fdw.task SET state = $2, finished_at = $3, command_tag = $4," \
	" rows = $5, result = $6, result_truncated = $7, error = $8, sqlstate = $9," \
	" error_detail = $10, error_hint = $11, error_context = $12" \
	" WHERE id OPERATOR(pg_catalog.=) $1" \
	"   AND state OPERATOR(pg_catalog.=) ANY ('{queued,running}'::pg_catalog.text[])"

#define RECOVER_SQL \
	"UPDATE task_fdw.task SET state = 'failed', finished_at = pg_catalog.now()," \
	" sqlstate = '57P02', error = 'task was interrupted: the dispatcher stopped" \
	" while it ran, and the remote server may or may not have completed it'" \
	" WHERE state OPERATOR(pg_catalog.=) 'running'"

static SPIPlanPtr find_pools_plan = NULL;
static SPIPlanPtr fetch_plan = NULL;
static SPIPlanPtr start_plan = NULL;
static SPIPlanPtr finish_plan = NULL;

static SPIPlanPtr prepare_plan(const char *sql, int nargs, Oid *argtypes);
static Datum text_or_null(const char *s, char *nulls, int i);

/*
 * QueueBegin starts a dispatcher transaction with SPI and a snapshot.
 */
void
QueueBegin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "task_fdw bookkeeping");
}

/*
 * QueueCommit commits the dispatcher transaction QueueBegin started.
 */
void
QueueCommit(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
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
	Oid			fetch_types[3] = {OIDOID, OIDOID, INT4OID};
	Oid			start_types[3] = {INT8OID, TIMESTAMPTZOID, INT4OID};
	Oid			finish_types[12] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID,
		INT8OID, JSONBOID, BOOLOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};

	find_pools_plan = prepare_plan(FIND_POOLS_SQL, 0, NULL);
	fetch_plan = prepare_plan(FETCH_SQL, 3, fetch_types);
	start_plan = prepare_plan(START_SQL, 3, start_types);
	finish_plan = prepare_plan(FINISH_SQL, 12, finish_types);
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

	if (SPI_execute_plan(find_pools_plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
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
 * QueueFetch claims up to limit more queued tasks of pool, oldest first,
 * into pool's held list.  Tasks already held are skipped.
 */
void
QueueFetch(Pool *pool, int limit)
{
	Datum		values[3];
	uint64		i;
	int			added = 0;
	int			asked = limit + pool->nheld;

	values[0] = ObjectIdGetDatum(pool->key.serverid);
	values[1] = ObjectIdGetDatum(pool->key.userid);
	values[2] = Int32GetDatum(asked);
	if (SPI_execute_plan(fetch_plan, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not fetch queued tasks");

	for (i = 0; i < SPI_processed && added < limit; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		dlist_iter	iter;
		bool		held = false;

		dlist_foreach(iter, &pool->held)
			if (dlist_container(Task, node, iter.cur)->id == id)
				held = true;
		if (held)
			continue;
		dlist_push_tail(&pool->held,
						&DispatcherNewTask(pool, id, SPI_getvalue(tup, desc, 2))->node);
		pool->nheld++;
		added++;
	}
	/* A short answer means the pool's queue is drained for now. */
	pool->has_queued = (SPI_processed == (uint64) asked);
	SPI_freetuptable(SPI_tuptable);
}

/*
 * QueueRecordStart marks task running on its connection's remote backend and
 * returns false if the task is no longer queued.
 */
bool
QueueRecordStart(Task *task)
{
	Datum		values[3];

	task->started_at = GetCurrentTimestamp();
	values[0] = Int64GetDatum(task->id);
	values[1] = TimestampTzGetDatum(task->started_at);
	values[2] = Int32GetDatum(task->remote_pid);
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
 * QueueRecordFinish records task's outcome.
 */
void
QueueRecordFinish(Task *task)
{
	Datum		values[12];
	char		nulls[12];

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(task->id);
	values[1] = CStringGetTextDatum(task->final_state);
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
	if (SPI_execute_plan(finish_plan, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not record the outcome of task " INT64_FORMAT, task->id);
}
