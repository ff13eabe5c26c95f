/*-------------------------------------------------------------------------
 *
 * wait.c
 *		  task_fdw.wait(): block until tasks are finished, without polling.
 *
 * A waiter re-reads the states it waits for (with the latest committed
 * snapshot, so it works in any isolation level) each time a dispatcher
 * broadcasts the shared condition variable after recording finished tasks,
 * and sleeps on it otherwise.  At each wake-up it reads only the task that
 * decides whether to go on waiting (the first unfinished one, or for a
 * batch the newest), so that a wait for thousands of tasks stays cheap.
 * The sleep responds to query cancel and statement_timeout.  Waiting for a
 * task that the waiting transaction itself submitted or changed is an
 * error: the dispatcher cannot see it before the transaction commits, so
 * the wait could only time out.
 *
 * IDENTIFICATION
 *		  src/wait.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(task_fdw_wait);
PG_FUNCTION_INFO_V1(task_fdw_wait_many);
PG_FUNCTION_INFO_V1(task_fdw_wait_batch);

static TimestampTz wait_deadline(FunctionCallInfo fcinfo, int argno);
static void wait_for_tasks(int64 *ids, char **states, int n, TimestampTz deadline);
static bool wait_sleep(TimestampTz deadline);
static void check_not_mine(int64 id, bool mine, const char *state);
static void read_task_state(Relation rel, int64 id, char **state);
static int64 read_batch(Relation rel, Oid index, Datum batch, List **ids, List **states);
static bool task_ended(int64 id);

/*
 * TaskFdwWakeWaiters wakes every session waiting for tasks to finish.
 */
void
TaskFdwWakeWaiters(void)
{
	ConditionVariableBroadcast(&TaskFdwState->task_finished);
}

/*
 * wait_deadline returns when a wait whose timeout is argument argno ends:
 * 0 for no timeout (NULL).  A negative timeout is an error.
 */
static TimestampTz
wait_deadline(FunctionCallInfo fcinfo, int argno)
{
	Interval   *timeout;
	int64		usecs;

	if (PG_ARGISNULL(argno))
		return 0;
	timeout = PG_GETARG_INTERVAL_P(argno);
	usecs = TaskFdwIntervalUsecs(timeout);
	if (usecs < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return GetCurrentTimestamp() + usecs;
}

/*
 * wait_for_tasks fills states with the state of each of the n tasks ids,
 * once all are final or deadline (0: none) has passed.
 *
 * The first pass reads every task, so that an unknown id, or a task of the
 * current transaction, is reported at once.  Afterwards each wake-up reads
 * tasks in order only up to the first one that is not final: until that one
 * ends, the others need not be read again, and a wait for thousands of
 * tasks costs a few index lookups per wake-up rather than thousands.  The
 * tasks after it are read again once it ends, or when the wait times out.
 */
static void
wait_for_tasks(int64 *ids, char **states, int n, TimestampTz deadline)
{
	int			first = 0;		/* the tasks before it are final */
	bool		read_all = true;	/* the first pass, or the last one */
	bool		timed_out = false;

	ConditionVariablePrepareToSleep(&TaskFdwState->task_finished);
	for (;;)
	{
		Relation	rel = TaskStoreOpen(AccessShareLock);
		int			i;

		for (i = first; i < n; i++)
		{
			if (states[i] == NULL || !TaskStateIsFinal(states[i]))
				read_task_state(rel, ids[i], &states[i]);
			if (!TaskStateIsFinal(states[i]) && !read_all)
				break;
		}
		/* No lock is held while sleeping: DDL on the store is not blocked. */
		table_close(rel, AccessShareLock);
		while (first < n && TaskStateIsFinal(states[first]))
			first++;
		if (first == n || timed_out)
			break;
		/* After a timeout, one more pass reports every task as it is now. */
		timed_out = !wait_sleep(deadline);
		read_all = timed_out;
	}
	ConditionVariableCancelSleep();
}

/*
 * read_task_state replaces *state with the state of task id as last
 * committed; an unknown task, or one the current transaction submitted or
 * changed and that is not finished, is an error.
 */
static void
read_task_state(Relation rel, int64 id, char **state)
{
	bool		mine;

	if (*state != NULL)
		pfree(*state);
	*state = TaskStoreReadState(rel, id, &mine);
	if (*state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("task " INT64_FORMAT " does not exist", id)));
	check_not_mine(id, mine, *state);
}

/*
 * wait_sleep sleeps until tasks may have finished, and returns false
 * instead if deadline (0: none) has passed.
 */
static bool
wait_sleep(TimestampTz deadline)
{
	long		remaining = -1;

	if (deadline != 0)
	{
		TimestampTz now = GetCurrentTimestamp();

		if (now >= deadline)
			return false;
		remaining = TimestampDifferenceMilliseconds(now, deadline) + 1;
	}
	(void) ConditionVariableTimedSleep(&TaskFdwState->task_finished, remaining,
									   TFDW_WAIT_EVENT_TASK);
	return true;
}

/*
 * check_not_mine raises an error for a task in state that the current
 * transaction submitted or changed (mine) and that is not finished.
 */
static void
check_not_mine(int64 id, bool mine, const char *state)
{
	if (mine && !TaskStateIsFinal(state))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot wait for task " INT64_FORMAT ": the current transaction submitted or changed it",
						id),
				 errhint("Commit first; the dispatcher sees tasks only once the transaction that submitted or changed them has committed.")));
}

/*
 * task_fdw_wait
 *		Wait for one task; return its state.
 */
Datum
task_fdw_wait(PG_FUNCTION_ARGS)
{
	int64		id;
	char	   *state = NULL;
	TimestampTz deadline;

	TaskFdwCheckPreloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task id must not be null")));
	id = PG_GETARG_INT64(0);
	deadline = wait_deadline(fcinfo, 1);
	wait_for_tasks(&id, &state, 1, deadline);
	PG_RETURN_TEXT_P(cstring_to_text(state));
}

/*
 * task_fdw_wait_many
 *		Wait for several tasks; return each one's state.
 */
Datum
task_fdw_wait_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *array;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int64	   *ids;
	char	  **states;
	TimestampTz deadline;
	int			i;

	TaskFdwCheckPreloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("array of task ids must not be null")));
	array = PG_GETARG_ARRAYTYPE_P(0);
	deadline = wait_deadline(fcinfo, 1);
	deconstruct_array(array, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	ids = palloc(sizeof(int64) * Max(n, 1));
	states = palloc0(sizeof(char *) * Max(n, 1));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("task ids must not be null")));
		ids[i] = DatumGetInt64(elems[i]);
	}

	wait_for_tasks(ids, states, n, deadline);

	InitMaterializedSRF(fcinfo, 0);
	for (i = 0; i < n; i++)
	{
		Datum		values[2];
		bool		isnull[2] = {false, false};

		values[0] = Int64GetDatum(ids[i]);
		values[1] = CStringGetTextDatum(states[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	return (Datum) 0;
}

/*
 * read_batch reads the id and state of each of the current user's tasks
 * labelled batch, as last committed, and returns the id of the newest one
 * that is not finished, or 0 if all are.
 */
static int64
read_batch(Relation rel, Oid index, Datum batch, List **ids, List **states)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TupleDesc	desc = RelationGetDescr(rel);
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	int64		pending = 0;

	*ids = NIL;
	*states = NIL;
	ScanKeyInit(&keys[0], Anum_task_userid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(GetUserId()));
	ScanKeyInit(&keys[1], Anum_task_batch, BTEqualStrategyNumber, F_TEXTEQ, batch);
	scan = systable_beginscan(rel, index, true, snapshot, 2, keys);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		int64	   *id = palloc(sizeof(int64));
		char	   *state;

		*id = DatumGetInt64(heap_getattr(tup, Anum_task_id, desc, &isnull));
		state = TextDatumGetCString(heap_getattr(tup, Anum_task_state, desc, &isnull));
		check_not_mine(*id,
					   TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data)),
					   state);
		if (!TaskStateIsFinal(state))
			pending = Max(pending, *id);
		*ids = lappend(*ids, id);
		*states = lappend(*states, state);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	return pending;
}

/*
 * task_ended returns whether task id is finished, or gone.
 */
static bool
task_ended(int64 id)
{
	Relation	rel = TaskStoreOpen(AccessShareLock);
	bool		mine;
	char	   *state = TaskStoreReadState(rel, id, &mine);
	bool		ended = state == NULL || TaskStateIsFinal(state);

	table_close(rel, AccessShareLock);
	if (state != NULL)
		pfree(state);
	return ended;
}

/*
 * task_fdw_wait_batch
 *		Wait for all of the caller's tasks of a batch; return each one's state.
 */
Datum
task_fdw_wait_batch(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz deadline;
	bool		timed_out = false;
	List	   *ids;
	List	   *states;
	ListCell   *lc1;
	ListCell   *lc2;

	TaskFdwCheckPreloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("batch must not be null")));
	deadline = wait_deadline(fcinfo, 1);

	ConditionVariablePrepareToSleep(&TaskFdwState->task_finished);
	for (;;)
	{
		Relation	rel = TaskStoreOpen(AccessShareLock);
		int64		pending = read_batch(rel, TaskStoreIndex("task_batch_idx"),
										 PG_GETARG_DATUM(0), &ids, &states);

		/* No lock is held while sleeping: DDL on the store is not blocked. */
		table_close(rel, AccessShareLock);
		if (pending == 0 || timed_out)
			break;
		list_free_deep(ids);
		list_free_deep(states);

		/*
		 * Until the newest unfinished task ends, a wake-up reads only it,
		 * not the whole batch; then the batch is read again, as it is also
		 * after a timeout.  The newest task is likely to end last (a pool
		 * runs tasks of equal priority oldest first), so the batch is
		 * usually read again only once, but any order gives the right
		 * answer: the full read decides.
		 */
		do
			timed_out = !wait_sleep(deadline);
		while (!timed_out && !task_ended(pending));
	}
	ConditionVariableCancelSleep();

	InitMaterializedSRF(fcinfo, 0);
	forboth(lc1, ids, lc2, states)
	{
		Datum		values[2];
		bool		isnull[2] = {false, false};

		values[0] = Int64GetDatum(*(int64 *) lfirst(lc1));
		values[1] = CStringGetTextDatum((char *) lfirst(lc2));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	return (Datum) 0;
}
