/*-------------------------------------------------------------------------
 *
 * store.c
 *		  Submitting sessions' access to the task store: inserting tasks and
 *		  reading a task's state, and who may see which task.
 *
 * Tasks are inserted straight into the heap and its indexes, in the
 * submitter's transaction, without going through SQL: the store's
 * privileges are revoked from PUBLIC, and the per-row cost stays close to
 * that of an INSERT into an ordinary table.
 *
 * Changes to existing tasks (cancel, reschedule, delete) go through SQL,
 * run as the owner of the store with prepared plans, because they must
 * lock the latest version of a row the dispatcher may be updating at the
 * same time, which SELECT ... FOR UPDATE and DELETE do for us.
 *
 * IDENTIFICATION
 *		  src/store.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "task_fdw.h"
#include "compat.h"

struct TaskInsertState
{
	Relation	rel;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	EState	   *estate;
	Oid			seqid;
};

/*
 * TaskStoreOpenForWriting opens the task store and its indexes for writing
 * rows straight into them, and returns them as a result relation.
 */
ResultRelInfo *
TaskStoreOpenForWriting(void)
{
	ResultRelInfo *rri = makeNode(ResultRelInfo);

	InitResultRelInfo(rri, TaskStoreOpen(RowExclusiveLock), 0, NULL, 0);
	ExecOpenIndices(rri, false);
	return rri;
}

/*
 * TaskStoreCloseForWriting closes what TaskStoreOpenForWriting opened,
 * keeping the lock until the end of the transaction.
 */
void
TaskStoreCloseForWriting(ResultRelInfo *rri)
{
	ExecCloseIndices(rri);
	table_close(rri->ri_RelationDesc, NoLock);
}

/*
 * TaskStoreBeginInsert opens the task store and its indexes for inserting
 * tasks in the executor state estate.
 */
TaskInsertState *
TaskStoreBeginInsert(EState *estate)
{
	TaskInsertState *state = palloc0(sizeof(TaskInsertState));

	state->rri = TaskStoreOpenForWriting();
	state->rel = state->rri->ri_RelationDesc;
	state->slot = table_slot_create(state->rel, NULL);
	state->estate = estate;
	state->seqid = getIdentitySequence(RelationGetRelid(state->rel), Anum_task_id, false);
	return state;
}

/*
 * TaskStoreInsert stores a new queued task and fills values and nulls
 * (Natts_task each) with the row stored, its new id included.
 */
void
TaskStoreInsert(TaskInsertState *state, const TaskSubmission *sub,
				Datum *values, bool *nulls)
{
	TupleTableSlot *slot = state->slot;
	int64		id = nextval_internal(state->seqid, false);
	int			i;

	ExecClearTuple(slot);
	for (i = 0; i < slot->tts_tupleDescriptor->natts; i++)
		slot->tts_isnull[i] = true;

#define SET_COLUMN(anum, datum) \
	(slot->tts_values[(anum) - 1] = (datum), slot->tts_isnull[(anum) - 1] = false)
	SET_COLUMN(Anum_task_id, Int64GetDatum(id));
	SET_COLUMN(Anum_task_server_id, ObjectIdGetDatum(sub->serverid));
	SET_COLUMN(Anum_task_userid, ObjectIdGetDatum(sub->userid));
	SET_COLUMN(Anum_task_sql, sub->sql);
	SET_COLUMN(Anum_task_state, CStringGetTextDatum(TFDW_STATE_QUEUED));
	SET_COLUMN(Anum_task_submitted_by, CStringGetTextDatum(sub->submitted_by));
	SET_COLUMN(Anum_task_submitted_at, TimestampTzGetDatum(sub->submitted_at));
	SET_COLUMN(Anum_task_priority, Int32GetDatum(sub->priority));
	if (sub->has_run_at)
		SET_COLUMN(Anum_task_run_at, TimestampTzGetDatum(sub->run_at));
	if (sub->timeout)
		SET_COLUMN(Anum_task_timeout, IntervalPGetDatum(sub->timeout));
	SET_COLUMN(Anum_task_max_attempts, Int32GetDatum(sub->max_attempts));
	SET_COLUMN(Anum_task_attempts, Int32GetDatum(0));
	if (sub->batch != (Datum) 0)
		SET_COLUMN(Anum_task_batch, sub->batch);
	if (sub->retry_sqlstates != (Datum) 0)
		SET_COLUMN(Anum_task_retry_sqlstates, sub->retry_sqlstates);
	if (sub->retry_delay)
		SET_COLUMN(Anum_task_retry_delay, IntervalPGetDatum(sub->retry_delay));
	SET_COLUMN(Anum_task_retry_interrupted, BoolGetDatum(sub->retry_interrupted));
	SET_COLUMN(Anum_task_origin_server_id, ObjectIdGetDatum(sub->origin_serverid));
#undef SET_COLUMN
	ExecStoreVirtualTuple(slot);
	memcpy(values, slot->tts_values, sizeof(Datum) * Natts_task);
	memcpy(nulls, slot->tts_isnull, sizeof(bool) * Natts_task);

	table_tuple_insert(state->rel, slot, GetCurrentCommandId(true), 0, NULL);
	(void) tfdw_insert_index_tuples(state->rri, slot, state->estate);
}

/*
 * TaskStoreEndInsert closes what TaskStoreBeginInsert opened.
 */
void
TaskStoreEndInsert(TaskInsertState *state)
{
	ExecDropSingleTupleTableSlot(state->slot);
	TaskStoreCloseForWriting(state->rri);
}

/*
 * TaskStateIsFinal returns whether a task in state will not change any more.
 */
bool
TaskStateIsFinal(const char *state)
{
	return strcmp(state, TFDW_STATE_DONE) == 0 ||
		strcmp(state, TFDW_STATE_FAILED) == 0 ||
		strcmp(state, TFDW_STATE_CANCELLED) == 0;
}

/*
 * TaskStateIs returns whether the text datum state is the state name; it
 * compares in place, without a copy.
 */
bool
TaskStateIs(Datum state, const char *name)
{
	text	   *t = DatumGetTextPP(state);
	int			len = VARSIZE_ANY_EXHDR(t);

	return len == strlen(name) && memcmp(VARDATA_ANY(t), name, len) == 0;
}

/*
 * TaskStoreTaskVisible returns whether the current user may see, cancel,
 * delete and wait for a task submitted by task_userid: superusers may for
 * every task, other roles for the tasks of roles whose privileges they have.
 */
bool
TaskStoreTaskVisible(Oid task_userid)
{
	Oid			me = GetUserId();

	return task_userid == me || superuser() || has_privs_of_role(me, task_userid);
}

/*
 * TaskStoreIsMonitor returns whether the current user has the privileges of
 * role task_fdw_monitor, which sees every task but not its results.
 */
bool
TaskStoreIsMonitor(void)
{
	Oid			monitor = get_role_oid(TFDW_MONITOR_ROLE, true);

	return OidIsValid(monitor) && has_privs_of_role(GetUserId(), monitor);
}

/*
 * TaskStoreReadState returns the state of task id as last committed, or NULL
 * if there is no such task or the current user may not see it, found in
 * rel, the task store, through its primary key.  *mine tells whether the
 * current transaction wrote that version of the task (submitted or changed
 * it).
 */
char *
TaskStoreReadState(Relation rel, int64 id, bool *mine)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *state = NULL;

	*mine = false;
	ScanKeyInit(&key, Anum_task_id, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	scan = systable_beginscan(rel, RelationGetPrimaryKeyIndex(rel), true, snapshot, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Oid			userid;

		userid = DatumGetObjectId(heap_getattr(tup, Anum_task_userid,
											   RelationGetDescr(rel), &isnull));
		if (TaskStoreTaskVisible(userid))
			state = TextDatumGetCString(heap_getattr(tup, Anum_task_state,
													 RelationGetDescr(rel), &isnull));
		*mine = TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	return state;
}

/* Statements that change a task on behalf of its submitter. */
#define LOCK_SQL \
	"SELECT * FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE"
#define CHANGE_SQL \
	"UPDATE task_fdw.task SET state = $2, finished_at = $3, error = $4, sqlstate = $5," \
	" priority = $6, run_at = $7, cancel_requested_at = $8" \
	" WHERE id OPERATOR(pg_catalog.=) $1 RETURNING *"
#define DELETE_SQL \
	"DELETE FROM task_fdw.task WHERE id OPERATOR(pg_catalog.=) $1 RETURNING *"

static SPIPlanPtr lock_plan = NULL;
static SPIPlanPtr change_plan = NULL;
static SPIPlanPtr delete_plan = NULL;

/* Saved identity while running a statement as the owner of the store. */
typedef struct StoreSpi
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
} StoreSpi;

/*
 * store_spi_begin connects to SPI as the owner of the task store, in a
 * restricted security context with a safe search_path, and prepares the
 * statements on first use.
 */
static void
store_spi_begin(StoreSpi *spi, Relation store)
{
	GetUserIdAndSecContext(&spi->save_userid, &spi->save_sec_context);
	SetUserIdAndSecContext(store->rd_rel->relowner,
						   spi->save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	/* Nothing the user put on their search_path may stand in for ours. */
	spi->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (lock_plan == NULL)
	{
		Oid			lock_types[1] = {INT8OID};
		Oid			change_types[8] = {INT8OID, TEXTOID, TIMESTAMPTZOID, TEXTOID,
		TEXTOID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID};
		SPIPlanPtr	plans[3];

		plans[0] = SPI_prepare(LOCK_SQL, 1, lock_types);
		plans[1] = SPI_prepare(CHANGE_SQL, 8, change_types);
		plans[2] = SPI_prepare(DELETE_SQL, 1, lock_types);
		if (plans[0] == NULL || plans[1] == NULL || plans[2] == NULL)
			elog(ERROR, "could not prepare task_fdw statements: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plans[0]);
		SPI_keepplan(plans[1]);
		SPI_keepplan(plans[2]);
		lock_plan = plans[0];
		change_plan = plans[1];
		delete_plan = plans[2];
	}
}

/*
 * store_spi_end disconnects from SPI and restores the caller's identity and
 * search_path.
 */
static void
store_spi_end(StoreSpi *spi)
{
	SPI_finish();
	AtEOXact_GUC(true, spi->save_nestlevel);
	SetUserIdAndSecContext(spi->save_userid, spi->save_sec_context);
}

/*
 * TaskStoreTaskIdAt returns the id of the task whose row version is at tid
 * in the task store rel (the version a scan of this command returned), and
 * the role that submitted it in *userid.
 */
int64
TaskStoreTaskIdAt(Relation rel, ItemPointer tid, Oid *userid)
{
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	bool		isnull;
	int64		id;

	if (!table_tuple_fetch_row_version(rel, tid, SnapshotAny, slot))
		elog(ERROR, "could not find the task at (%u,%u)",
			 ItemPointerGetBlockNumber(tid), ItemPointerGetOffsetNumber(tid));
	id = DatumGetInt64(slot_getattr(slot, Anum_task_id, &isnull));
	*userid = DatumGetObjectId(slot_getattr(slot, Anum_task_userid, &isnull));
	ExecDropSingleTupleTableSlot(slot);
	return id;
}

/*
 * store_row_by_id runs *plan (prepared by store_spi_begin), which takes task
 * id $1 and returns its row or nothing, and returns a copy of that row or
 * NULL; what names the action for the error raised if the plan does not end
 * with expected.
 */
static HeapTuple
store_row_by_id(Relation rel, SPIPlanPtr *plan, int64 id, int expected, const char *what)
{
	StoreSpi	spi;
	Datum		values[1];
	HeapTuple	tuple = NULL;

	values[0] = Int64GetDatum(id);
	store_spi_begin(&spi, rel);
	if (SPI_execute_plan(*plan, values, NULL, false, 1) != expected)
		elog(ERROR, "could not %s task " INT64_FORMAT, what, id);
	if (SPI_processed == 1)
		tuple = SPI_copytuple(SPI_tuptable->vals[0]);
	store_spi_end(&spi);
	return tuple;
}

/*
 * TaskStoreLockTask locks the latest version of task id's row until the end
 * of the transaction and returns a copy of it, or NULL if the task is gone.
 */
HeapTuple
TaskStoreLockTask(Relation rel, int64 id)
{
	return store_row_by_id(rel, &lock_plan, id, SPI_OK_SELECT, "lock");
}

/*
 * TaskStoreChangeTask writes new values of the changeable columns of task
 * id, locked by TaskStoreLockTask, and returns a copy of the new row.
 * values and nulls are indexed by the store's attribute numbers minus one;
 * only the changeable columns are read.
 */
HeapTuple
TaskStoreChangeTask(Relation rel, int64 id, Datum *values, bool *nulls)
{
	static const AttrNumber columns[] = {
		Anum_task_state, Anum_task_finished_at, Anum_task_error, Anum_task_sqlstate,
		Anum_task_priority, Anum_task_run_at, Anum_task_cancel_requested_at
	};
	StoreSpi	spi;
	Datum		params[8];
	char		pnulls[8];
	HeapTuple	tuple;
	int			i;

	params[0] = Int64GetDatum(id);
	pnulls[0] = ' ';
	for (i = 0; i < lengthof(columns); i++)
	{
		params[i + 1] = values[columns[i] - 1];
		pnulls[i + 1] = nulls[columns[i] - 1] ? 'n' : ' ';
	}
	store_spi_begin(&spi, rel);
	if (SPI_execute_plan(change_plan, params, pnulls, false, 1) != SPI_OK_UPDATE_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not change task " INT64_FORMAT, id);
	tuple = SPI_copytuple(SPI_tuptable->vals[0]);
	store_spi_end(&spi);
	return tuple;
}

/*
 * TaskStoreDeleteTask removes the latest version of task id's row and
 * returns a copy of it, or NULL if the task is gone.
 */
HeapTuple
TaskStoreDeleteTask(Relation rel, int64 id)
{
	return store_row_by_id(rel, &delete_plan, id, SPI_OK_DELETE_RETURNING, "delete");
}

/*
 * unfinished_index returns the OID of the task store rel's index of queued
 * and running tasks, task_unfinished_idx, or InvalidOid before version 1.4.
 */
static Oid
unfinished_index(Relation rel)
{
	return get_relname_relid("task_unfinished_idx", RelationGetNamespace(rel));
}

/*
 * TaskStoreBeginStateScan starts a scan of the task store rel that returns
 * the tasks in state, as of snapshot, among others: the caller checks each
 * row's state (TaskStoreRowInState).  Since 1.4, queued and running tasks
 * are found through task_unfinished_idx, failed and cancelled ones through
 * task_failed_idx; before, queued ones through task_queued_idx, and the
 * others through task_state_idx.  Done tasks, the bulk of the store, are in
 * none of them (an index entry for each would cost every task one more
 * index insertion when it ends), so they are read from the table itself.
 */
SysScanDesc
TaskStoreBeginStateScan(Relation rel, Snapshot snapshot, const char *state)
{
	Oid			unfinished = unfinished_index(rel);
	ScanKeyData key;

	if (strcmp(state, TFDW_STATE_DONE) == 0)
	{
		ScanKeyInit(&key, Anum_task_state, BTEqualStrategyNumber, F_TEXTEQ,
					CStringGetTextDatum(state));
		return systable_beginscan(rel, InvalidOid, false, snapshot, 1, &key);
	}
	if (OidIsValid(unfinished))
		return systable_beginscan(rel, TaskStateIsFinal(state) ?
								  TaskStoreIndex("task_failed_idx") : unfinished,
								  true, snapshot, 0, NULL);
	if (strcmp(state, TFDW_STATE_QUEUED) == 0)
		return systable_beginscan(rel, TaskStoreIndex("task_queued_idx"), true,
								  snapshot, 0, NULL);
	ScanKeyInit(&key, Anum_task_state, BTEqualStrategyNumber, F_TEXTEQ,
				CStringGetTextDatum(state));
	return systable_beginscan(rel, TaskStoreIndex("task_state_idx"), true,
							  snapshot, 1, &key);
}

/*
 * TaskStoreRowInState returns whether the task store row tup is in state.
 */
bool
TaskStoreRowInState(HeapTuple tup, TupleDesc desc, const char *state)
{
	bool		isnull;

	return TaskStateIs(heap_getattr(tup, Anum_task_state, desc, &isnull), state);
}

/*
 * TaskStoreForEachUnfinished calls fn for each task of the task store rel
 * that is queued or running as of snapshot, with running saying which.
 */
void
TaskStoreForEachUnfinished(Relation rel, Snapshot snapshot,
						   TaskStoreTaskCallback fn, void *arg)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		one_index = OidIsValid(unfinished_index(rel));
	int			i;

	/* Before 1.4, queued and running tasks are in two indexes. */
	for (i = 0; i < (one_index ? 1 : 2); i++)
	{
		SysScanDesc scan;
		HeapTuple	tup;

		scan = TaskStoreBeginStateScan(rel, snapshot,
									   i == 0 ? TFDW_STATE_QUEUED : TFDW_STATE_RUNNING);
		while ((tup = systable_getnext(scan)) != NULL)
		{
			bool		running = TaskStoreRowInState(tup, desc, TFDW_STATE_RUNNING);

			CHECK_FOR_INTERRUPTS();
			if (running || TaskStoreRowInState(tup, desc, TFDW_STATE_QUEUED))
				fn(tup, desc, running, arg);
		}
		systable_endscan(scan);
	}
}

/*
 * count_task counts one task: a TaskStoreForEachUnfinished callback.
 */
static void
count_task(HeapTuple tup, TupleDesc desc, bool running, void *count)
{
	(*(int64 *) count)++;
}

/*
 * TaskStoreCountUnfinished returns how many tasks of this database are
 * queued or running, as last committed: 0 if the extension is no longer
 * installed (dropped by a transaction that committed while this one
 * waited for the store's lock).
 */
int64
TaskStoreCountUnfinished(void)
{
	Oid			relid = TaskStoreLock(AccessShareLock, false, NULL);
	Relation	rel;
	Snapshot	snapshot;
	int64		count = 0;

	if (!OidIsValid(relid))
		return 0;
	rel = table_open(relid, NoLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	TaskStoreForEachUnfinished(rel, snapshot, count_task, &count);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);
	return count;
}

/*
 * notify_room returns whether completion notifications may be sent now:
 * whether PostgreSQL's notification queue is at most
 * task_fdw.notify_queue_limit full.
 *
 * A session that listens but does not read (one idle in a transaction, say)
 * holds back the queue's tail.  Once the queue is full, every commit that
 * notifies fails; for the dispatcher, that would mean exiting with the
 * outcomes of its turn unrecorded, and again at each restart.  Past the
 * limit, notifications are dropped instead: the dispatcher logs when it
 * stops sending them and when it starts again, and a session that cancels
 * a task gets a warning.  Reading the usage also moves the queue's tail up
 * to the slowest listener, so the queue empties once that one reads.
 */
static bool
notify_room(void)
{
	static bool skipping = false;
	LOCAL_FCINFO(fcinfo, 0);
	double		usage;

	InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
	usage = DatumGetFloat8(pg_notification_queue_usage(fcinfo));
	if (usage <= TaskFdwNotifyQueueLimit)
	{
		if (skipping && IsBackgroundWorker)
			ereport(LOG,
					(errmsg("task_fdw is sending completion notifications again")));
		skipping = false;
		return true;
	}
	if (!skipping || !IsBackgroundWorker)
		ereport(IsBackgroundWorker ? LOG : WARNING,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("task_fdw is not sending completion notifications: the notification queue is %.3g%% full",
						usage * 100),
				 errdetail("The limit, task_fdw.notify_queue_limit, is %.3g%%.",
						   TaskFdwNotifyQueueLimit * 100),
				 errhint("A session that listens is not reading its notifications: end its transaction, or the session.")));
	skipping = true;
	return false;
}

/*
 * TaskStoreNotifyFinished queues the completion notification of task id,
 * sent on channel task_fdw when the transaction commits, unless the
 * notification queue has no room (see notify_room), which is asked once per
 * transaction: a dispatcher turn, or a session's cancels.
 */
void
TaskStoreNotifyFinished(int64 id, const char *state)
{
	static LocalTransactionId asked_in = InvalidLocalTransactionId;
	static bool room = false;

	if (tfdw_local_xid() != asked_in)
	{
		room = notify_room();
		asked_in = tfdw_local_xid();
	}
	if (!room)
		return;
	Async_Notify(TFDW_NOTIFY_CHANNEL,
				 psprintf("{\"id\": " INT64_FORMAT ", \"state\": \"%s\"}", id, state));
}
