/*-------------------------------------------------------------------------
 *
 * wait.c
 *		  task_fdw.wait(): block until tasks are finished, without polling.
 *
 * A waiter re-reads the states it waits for (with the latest committed
 * snapshot, so it works in any isolation level) each time a dispatcher
 * broadcasts the shared condition variable after recording finished tasks,
 * and sleeps on it otherwise.  The sleep responds to query cancel and
 * statement_timeout.
 *
 * IDENTIFICATION
 *		  src/wait.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(task_fdw_wait);
PG_FUNCTION_INFO_V1(task_fdw_wait_many);

static TimestampTz wait_deadline(FunctionCallInfo fcinfo, int argno);
static bool is_final_state(const char *state);
static void wait_for_tasks(int64 *ids, char **states, int n, TimestampTz deadline);

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
	usecs = timeout->time + (int64) timeout->day * USECS_PER_DAY +
		(int64) timeout->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (usecs < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	return GetCurrentTimestamp() + usecs;
}

/*
 * is_final_state returns whether a task in state will not change any more.
 */
static bool
is_final_state(const char *state)
{
	return strcmp(state, TFDW_STATE_DONE) == 0 ||
		strcmp(state, TFDW_STATE_FAILED) == 0 ||
		strcmp(state, TFDW_STATE_CANCELLED) == 0;
}

/*
 * wait_for_tasks fills states with the state of each of the n tasks ids,
 * once all are final or deadline (0: none) has passed.
 */
static void
wait_for_tasks(int64 *ids, char **states, int n, TimestampTz deadline)
{
	Relation	rel = table_open(TaskStoreRelid(), AccessShareLock);
	Oid			pkey = TaskStoreIndex("task_pkey");
	ConditionVariable *cv = &TaskFdwState->task_finished;

	ConditionVariablePrepareToSleep(cv);
	for (;;)
	{
		bool		all_final = true;
		long		remaining = -1;
		int			i;

		for (i = 0; i < n; i++)
		{
			if (states[i] != NULL)
			{
				if (is_final_state(states[i]))
					continue;
				pfree(states[i]);
			}
			states[i] = TaskStoreReadState(rel, pkey, ids[i]);
			if (states[i] == NULL)
			{
				ConditionVariableCancelSleep();
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("task " INT64_FORMAT " does not exist", ids[i])));
			}
			if (!is_final_state(states[i]))
				all_final = false;
		}
		if (all_final)
			break;
		if (deadline != 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (now >= deadline)
				break;
			remaining = TimestampDifferenceMilliseconds(now, deadline) + 1;
		}
		(void) ConditionVariableTimedSleep(cv, remaining, TFDW_WAIT_EVENT_TASK);
	}
	ConditionVariableCancelSleep();
	table_close(rel, AccessShareLock);
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
