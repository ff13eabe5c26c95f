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
#include "commands/sequence.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
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
 * TaskStoreBeginInsert opens the task store and its indexes for inserting
 * tasks in the executor state estate.
 */
TaskInsertState *
TaskStoreBeginInsert(EState *estate)
{
	TaskInsertState *state = palloc0(sizeof(TaskInsertState));

	state->rel = table_open(TaskStoreRelid(), RowExclusiveLock);
	state->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(state->rri, state->rel, 0, NULL, 0);
	ExecOpenIndices(state->rri, false);
	state->slot = table_slot_create(state->rel, NULL);
	state->estate = estate;
	state->seqid = getIdentitySequence(RelationGetRelid(state->rel), Anum_task_id, false);
	return state;
}

/*
 * TaskStoreInsert stores a new queued task and returns its id.
 */
int64
TaskStoreInsert(TaskInsertState *state, Oid serverid, Oid userid,
				const char *submitted_by, Datum sql, TimestampTz submitted_at)
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
	SET_COLUMN(Anum_task_server_id, ObjectIdGetDatum(serverid));
	SET_COLUMN(Anum_task_userid, ObjectIdGetDatum(userid));
	SET_COLUMN(Anum_task_sql, sql);
	SET_COLUMN(Anum_task_state, CStringGetTextDatum(TFDW_STATE_QUEUED));
	SET_COLUMN(Anum_task_submitted_by, CStringGetTextDatum(submitted_by));
	SET_COLUMN(Anum_task_submitted_at, TimestampTzGetDatum(submitted_at));
#undef SET_COLUMN
	ExecStoreVirtualTuple(slot);

	table_tuple_insert(state->rel, slot, GetCurrentCommandId(true), 0, NULL);
	(void) tfdw_insert_index_tuples(state->rri, slot, state->estate);
	return id;
}

/*
 * TaskStoreEndInsert closes what TaskStoreBeginInsert opened.
 */
void
TaskStoreEndInsert(TaskInsertState *state)
{
	ExecDropSingleTupleTableSlot(state->slot);
	ExecCloseIndices(state->rri);
	table_close(state->rel, NoLock);
}

/*
 * TaskStoreTaskVisible returns whether the current user may see a task
 * submitted by task_userid: superusers see every task, other roles the tasks
 * of roles whose privileges they have.
 */
bool
TaskStoreTaskVisible(Oid task_userid)
{
	Oid			me = GetUserId();

	return task_userid == me || superuser() || has_privs_of_role(me, task_userid);
}

/*
 * TaskStoreReadState returns the state of task id as last committed, or NULL
 * if there is no such task or the current user may not see it.  rel is the
 * task store and pkey its primary key index.
 */
char *
TaskStoreReadState(Relation rel, Oid pkey, int64 id)
{
	Snapshot	snapshot = RegisterSnapshot(GetLatestSnapshot());
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *state = NULL;

	ScanKeyInit(&key, Anum_task_id, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	scan = systable_beginscan(rel, pkey, true, snapshot, 1, &key);
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
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	return state;
}
