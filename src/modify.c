/*-------------------------------------------------------------------------
 *
 * modify.c
 *		  INSERT, UPDATE and DELETE on a task_fdw foreign table: submitting,
 *		  cancelling, rescheduling and removing tasks.
 *
 * INSERT: each row becomes a queued task in the task store, written in the
 * inserting transaction, so a rolled-back INSERT leaves nothing.  The
 * writable attributes (sql, server, priority, run_at, timeout, max_attempts,
 * batch) may be given; those left out or null take the foreign table's
 * option, then the task's server's, then the built-in default.  A task runs
 * on the server its "server" value names (fan-out), or on the table's own
 * server; each server a statement submits to is checked once (that it is a
 * task_fdw server, the submitter's USAGE on it unless it is the table's own,
 * the user mapping and its password) and its defaults read once.  COPY into
 * the foreign table submits tasks the same way.
 *
 * UPDATE: "SET state = 'cancelled'" cancels a task: a queued one is
 * cancelled at once, a running one is marked so that the dispatcher sends a
 * cancel request to its remote once the transaction commits; a finished one
 * keeps its real outcome and is not counted as updated.  priority and
 * run_at of a queued task may be changed.  Nothing else may be.
 *
 * DELETE removes tasks; a running one is cancelled by the dispatcher once
 * the transaction commits, so nothing runs without a record.
 *
 * Rows to change are identified by the ctid the scan returns (the task
 * store's row), and changed through store.c, which locks the latest
 * version of the row first.  The dispatcher is told what happened when the
 * transaction ends.
 *
 * IDENTIFICATION
 *		  src/modify.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "foreign/fdwapi.h"
#include "foreign/foreign.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "optimizer/appendinfo.h"
#include "optimizer/planmain.h"
#include "parser/parsetree.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"

/*
 * A server that an INSERT or COPY submits tasks to, checked, with the
 * defaults of its tasks: looked up once per statement.
 */
typedef struct TaskTarget
{
	char	   *name;			/* as the "server" column named it, or NULL */
	int			namelen;
	Oid			serverid;
	TaskDefaults defaults;
	Datum		batch;			/* defaults.batch as text, or 0 */
	Datum		retry_sqlstates;	/* text[] from the options, or 0 */
} TaskTarget;

/* Executor state of a modification of a foreign table. */
typedef struct TaskModifyState
{
	TaskColumnMap *map;

	/* INSERT and COPY */
	Oid			serverid;		/* the foreign table's server */
	Oid			userid;			/* the submitter */
	AttrNumber	sql_attno;		/* the foreign table's "sql" column */
	AttrNumber	server_attno;	/* its "server" column, or 0 */
	char	   *submitted_by;
	ForeignTable *table;
	MemoryContext cxt;			/* the statement's: targets live there */
	MemoryContext rowcxt;		/* one row's values: reset for every row */
	TaskTarget *own;			/* the table's server, once used */
	List	   *targets;		/* of TaskTarget: servers named so far */
	TaskTarget *last;			/* the one the last row named */
	TaskInsertState *insert;

	/* UPDATE and DELETE */
	Relation	store;			/* the task store */
	AttrNumber	ctid_attno;		/* junk column identifying the row */
	AttrNumber	state_attno;	/* columns that UPDATE sets, or 0 */
	AttrNumber	priority_attno;
	AttrNumber	run_at_attno;
} TaskModifyState;

static TaskModifyState *begin_insert(ResultRelInfo *rinfo, EState *estate);
static TaskTarget *task_target(TaskModifyState *state, Datum name);
static TaskTarget *new_target(TaskModifyState *state, ForeignServer *server,
							  const char *name);
static AttrNumber find_column(TaskColumnMap *map, AttrNumber task_attnum);
static AttrNumber sql_column(Relation rel, TaskColumnMap *map);
static void check_read_only(Relation rel, const TaskAttribute *attr);
static void check_positive(Relation rel, const char *column, bool ok);
static void check_finite_run_at(Relation rel, TimestampTz run_at);
static bool target_task(TaskModifyState *state, TupleTableSlot *planSlot, int64 *id);
static TupleTableSlot *returning_slot(TaskModifyState *state, TupleTableSlot *slot,
									  HeapTuple tuple);

/*
 * find_column returns the foreign table column holding task attribute
 * task_attnum, or InvalidAttrNumber.
 */
static AttrNumber
find_column(TaskColumnMap *map, AttrNumber task_attnum)
{
	int			i;

	for (i = 0; i < map->natts; i++)
		if (map->attrs[i] && map->attrs[i]->task_attnum == task_attnum)
			return i + 1;
	return InvalidAttrNumber;
}

/*
 * sql_column returns the attribute number of rel's "sql" column, raising an
 * error if it has none: there would be nothing to run.
 */
static AttrNumber
sql_column(Relation rel, TaskColumnMap *map)
{
	AttrNumber	attno = find_column(map, Anum_task_sql);

	if (attno == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_COLUMN_NAME_NOT_FOUND),
				 errmsg("foreign table \"%s\" has no column \"sql\"",
						RelationGetRelationName(rel)),
				 errhint("Tasks can only be submitted through a foreign table that has the attribute \"sql text\".")));
	return attno;
}

/*
 * check_read_only raises the error for a value given to a read-only
 * attribute.
 */
static void
check_read_only(Relation rel, const TaskAttribute *attr)
{
	if (!attr->writable)
		ereport(ERROR,
				(errcode(ERRCODE_GENERATED_ALWAYS),
				 errmsg("cannot set column \"%s\" of foreign table \"%s\"",
						attr->name, RelationGetRelationName(rel)),
				 errdetail("Column \"%s\" is a read-only task attribute.", attr->name),
				 errhint("A task can be submitted with sql, server, priority, run_at, timeout, max_attempts and batch.")));
}

/*
 * check_positive raises the error for a value of column that is not
 * positive (ok is false).
 */
static void
check_positive(Relation rel, const char *column, bool ok)
{
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("value of column \"%s\" of foreign table \"%s\" must be positive",
						column, RelationGetRelationName(rel))));
}

/*
 * check_finite_run_at raises the error for a run_at of infinity: the task
 * would never run (-infinity is as good as now, and allowed).
 */
static void
check_finite_run_at(Relation rel, TimestampTz run_at)
{
	if (TIMESTAMP_IS_NOEND(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("value of column \"run_at\" of foreign table \"%s\" must be finite",
						RelationGetRelationName(rel)),
				 errdetail("A task to run at infinity would never run."),
				 errhint("Use NULL to run the task as soon as possible.")));
}

/*
 * taskIsForeignRelUpdatable
 *		Tasks can be inserted, updated (cancelled or rescheduled) and deleted.
 */
int
taskIsForeignRelUpdatable(Relation rel)
{
	return (1 << CMD_INSERT) | (1 << CMD_UPDATE) | (1 << CMD_DELETE);
}

/*
 * taskAddForeignUpdateTargets
 *		Ask the scan for the ctid of each row: where the task is stored.
 */
void
taskAddForeignUpdateTargets(PlannerInfo *root, Index rtindex,
							RangeTblEntry *target_rte, Relation target_relation)
{
	Var		   *var = makeVar(rtindex, SelfItemPointerAttributeNumber, TIDOID, -1,
							  InvalidOid, 0);

	add_row_identity_var(root, var, rtindex, "ctid");
}

/*
 * taskPlanForeignModify
 *		Check the columns an INSERT or UPDATE sets.
 */
List *
taskPlanForeignModify(PlannerInfo *root, ModifyTable *plan,
					  Index resultRelation, int subplan_index)
{
	RangeTblEntry *rte = planner_rt_fetch(resultRelation, root);
	Relation	rel;
	TaskColumnMap *map;
	Bitmapset  *cols = NULL;
	int			col = -1;

	rel = table_open(rte->relid, NoLock);
	map = TaskColumnMapBuild(rel);
	if (plan->operation == CMD_INSERT)
	{
		(void) sql_column(rel, map);
		cols = tfdw_inserted_cols(root, rte);
	}
	else if (plan->operation == CMD_UPDATE)
		cols = tfdw_updated_cols(root, resultRelation);
	else if (plan->operation != CMD_DELETE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("task_fdw foreign tables do not support this command")));

	while ((col = bms_next_member(cols, col)) >= 0)
	{
		AttrNumber	attno = col + FirstLowInvalidHeapAttributeNumber;
		const TaskAttribute *attr;

		if (attno <= 0 || map->attrs[attno - 1] == NULL)
			continue;
		attr = map->attrs[attno - 1];
		if (plan->operation == CMD_INSERT)
			check_read_only(rel, attr);
		else if (!attr->updatable)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot change column \"%s\" of foreign table \"%s\"",
							attr->name, RelationGetRelationName(rel)),
					 errdetail("A task cannot be changed once submitted, except to cancel it or to reschedule it while it is queued."),
					 errhint("Use SET state = 'cancelled' to cancel tasks, or change priority or run_at of queued tasks.")));
	}
	table_close(rel, NoLock);
	return NIL;
}

/*
 * begin_insert prepares to submit tasks through rinfo's foreign table: it
 * resolves the submitter and finds the table's columns.  The servers the
 * tasks go to are checked as rows name them (task_target).
 */
static TaskModifyState *
begin_insert(ResultRelInfo *rinfo, EState *estate)
{
	Relation	rel = rinfo->ri_RelationDesc;
	TaskModifyState *state = palloc0(sizeof(TaskModifyState));

	TaskFdwCheckPreloaded();
	state->map = TaskColumnMapBuild(rel);
	state->sql_attno = sql_column(rel, state->map);
	state->server_attno = find_column(state->map, Anum_task_server_id);
	state->table = GetForeignTable(RelationGetRelid(rel));
	state->serverid = state->table->serverid;
	state->userid = tfdw_result_rel_user(rinfo, estate);
	state->submitted_by = GetUserNameFromId(state->userid, false);
	state->cxt = CurrentMemoryContext;
	state->rowcxt = AllocSetContextCreate(CurrentMemoryContext, "task_fdw insert row",
										  ALLOCSET_DEFAULT_SIZES);
	state->insert = TaskStoreBeginInsert(estate);
	return state;
}

/*
 * task_target returns the server a row's task goes to: the one its "server"
 * value name (a text Datum) names, or the table's own server when name is 0.
 * Each is looked up and checked on first use in the statement only, so a
 * multi-row INSERT or a COPY does not repeat catalog lookups for every row.
 */
static TaskTarget *
task_target(TaskModifyState *state, Datum name)
{
	text	   *value;
	const char *data;
	int			len;
	ListCell   *lc;
	char	   *cname;
	ForeignServer *server;

	if (name == (Datum) 0)
	{
		if (state->own == NULL)
			state->own = new_target(state, GetForeignServer(state->serverid), NULL);
		return state->own;
	}

	value = DatumGetTextPP(name);
	data = VARDATA_ANY(value);
	len = VARSIZE_ANY_EXHDR(value);
#define TARGET_IS(t, d, l) ((t)->namelen == (l) && memcmp((t)->name, (d), (l)) == 0)
	if (state->last != NULL && TARGET_IS(state->last, data, len))
		return state->last;
	foreach(lc, state->targets)
	{
		TaskTarget *target = lfirst(lc);

		if (TARGET_IS(target, data, len))
			return state->last = target;
	}
#undef TARGET_IS

	cname = text_to_cstring(value);
	server = GetForeignServerByName(cname, true);
	if (server == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("server \"%s\" does not exist", cname)));
	state->last = new_target(state, server, cname);
	return state->last;
}

/*
 * new_target checks that tasks may be submitted to server, as the server
 * of a row's task, and reads the defaults of its tasks.  Any server but the
 * table's own needs the submitter's USAGE privilege.  The user mapping is needed, with the password that roles
 * other than superusers must have, so that a missing one fails the INSERT
 * rather than the task.  A target with a name is kept for later rows.
 */
static TaskTarget *
new_target(TaskModifyState *state, ForeignServer *server, const char *name)
{
	MemoryContext old = MemoryContextSwitchTo(state->cxt);
	TaskTarget *target = palloc0(sizeof(TaskTarget));
	TaskDefaults *defaults = &target->defaults;

	if (!IsTaskFdwServer(server->serverid))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("server \"%s\" is not a task_fdw server", server->servername),
				 errdetail("Tasks can only run on servers of the foreign-data wrapper task_fdw.")));
	if (server->serverid != state->serverid)
	{
		AclResult	aclresult = tfdw_server_aclcheck(server->serverid, state->userid);

		if (aclresult != ACLCHECK_OK)
			aclcheck_error(aclresult, OBJECT_FOREIGN_SERVER, server->servername);
	}
	TaskFdwCheckPassword(server, GetUserMapping(state->userid, server->serverid));
	TaskFdwGetTaskDefaults(state->table, server, defaults);
	if (defaults->batch != NULL)
		target->batch = CStringGetTextDatum(defaults->batch);
	if (defaults->retry_sqlstates != NIL)
		target->retry_sqlstates =
			PointerGetDatum(strlist_to_textarray(defaults->retry_sqlstates));
	target->serverid = server->serverid;
	if (name != NULL)
	{
		target->name = pstrdup(name);
		target->namelen = strlen(name);
		state->targets = lappend(state->targets, target);
	}
	MemoryContextSwitchTo(old);
	return target;
}

/*
 * taskBeginForeignModify
 *		Prepare an INSERT, UPDATE or DELETE.
 */
void
taskBeginForeignModify(ModifyTableState *mtstate, ResultRelInfo *rinfo,
					   List *fdw_private, int subplan_index, int eflags)
{
	Relation	rel = rinfo->ri_RelationDesc;
	TaskModifyState *state;
	Plan	   *subplan;

	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	if (mtstate->operation == CMD_INSERT)
	{
		rinfo->ri_FdwState = begin_insert(rinfo, mtstate->ps.state);
		return;
	}

	TaskFdwCheckPreloaded();
	state = palloc0(sizeof(TaskModifyState));
	state->map = TaskColumnMapBuild(rel);
	state->store = TaskStoreOpen(RowExclusiveLock);
	subplan = outerPlanState(mtstate)->plan;
	state->ctid_attno = ExecFindJunkAttributeInTlist(subplan->targetlist, "ctid");
	if (!AttributeNumberIsValid(state->ctid_attno))
		elog(ERROR, "could not find junk ctid column");
	if (mtstate->operation == CMD_UPDATE)
	{
		Bitmapset  *cols = ExecGetUpdatedCols(rinfo, mtstate->ps.state);
		int			col = -1;

		while ((col = bms_next_member(cols, col)) >= 0)
		{
			AttrNumber	attno = col + FirstLowInvalidHeapAttributeNumber;
			const TaskAttribute *attr;

			if (attno <= 0 || state->map->attrs[attno - 1] == NULL)
				continue;
			attr = state->map->attrs[attno - 1];
			if (attr->task_attnum == Anum_task_state)
				state->state_attno = attno;
			else if (attr->task_attnum == Anum_task_priority)
				state->priority_attno = attno;
			else if (attr->task_attnum == Anum_task_run_at)
				state->run_at_attno = attno;
		}
	}
	rinfo->ri_FdwState = state;
}

/*
 * taskBeginForeignInsert
 *		Prepare a COPY into the foreign table (or routing to it as a partition).
 */
void
taskBeginForeignInsert(ModifyTableState *mtstate, ResultRelInfo *rinfo)
{
	rinfo->ri_FdwState = begin_insert(rinfo, mtstate->ps.state);
}

/*
 * taskExecForeignInsert
 *		Submit one task; fill the slot for RETURNING.
 *
 * The executor calls this in the query's memory context, once per row of an
 * INSERT ... SELECT: what a row needs lives in state->rowcxt, which the next
 * row resets (the slot returned points into it until then).
 */
TupleTableSlot *
taskExecForeignInsert(EState *estate, ResultRelInfo *rinfo,
					  TupleTableSlot *slot, TupleTableSlot *planSlot)
{
	TaskModifyState *state = rinfo->ri_FdwState;
	TaskTarget *target;
	TaskDefaults *defaults;
	Relation	rel = rinfo->ri_RelationDesc;
	TaskSubmission sub;
	Datum		store_values[Natts_task];
	bool		store_nulls[Natts_task];
	char	   *sqltext;
	int			i;
	MemoryContext old;

	MemoryContextReset(state->rowcxt);
	old = MemoryContextSwitchTo(state->rowcxt);
	slot_getallattrs(slot);
	target = task_target(state,
						 state->server_attno == 0 ||
						 slot->tts_isnull[state->server_attno - 1] ? (Datum) 0 :
						 slot->tts_values[state->server_attno - 1]);
	defaults = &target->defaults;

	memset(&sub, 0, sizeof(sub));
	sub.serverid = target->serverid;
	sub.origin_serverid = state->serverid;
	sub.userid = state->userid;
	sub.submitted_by = state->submitted_by;
	sub.submitted_at = GetCurrentTransactionStartTimestamp();
	sub.priority = defaults->priority;
	sub.timeout = defaults->timeout;
	sub.max_attempts = defaults->max_attempts;
	sub.batch = target->batch;
	sub.retry_sqlstates = target->retry_sqlstates;
	sub.retry_delay = defaults->retry_delay;
	sub.retry_interrupted = defaults->retry_interrupted;

	/* Values taken from the slot, sql too, are copied: it is cleared for RETURNING. */
	for (i = 0; i < state->map->natts; i++)
	{
		const TaskAttribute *attr = state->map->attrs[i];
		Datum		value = slot->tts_values[i];

		if (attr == NULL || slot->tts_isnull[i])
			continue;
		check_read_only(rel, attr);
		switch (attr->task_attnum)
		{
			case Anum_task_priority:
				sub.priority = DatumGetInt32(value);
				break;
			case Anum_task_run_at:
				sub.has_run_at = true;
				sub.run_at = DatumGetTimestampTz(value);
				check_finite_run_at(rel, sub.run_at);
				break;
			case Anum_task_timeout:
				sub.timeout = DatumGetIntervalP(datumCopy(value, false, sizeof(Interval)));
				check_positive(rel, "timeout", TaskFdwIntervalUsecs(sub.timeout) > 0);
				break;
			case Anum_task_max_attempts:
				sub.max_attempts = DatumGetInt32(value);
				check_positive(rel, "max_attempts", sub.max_attempts > 0);
				break;
			case Anum_task_batch:
				sub.batch = PointerGetDatum(PG_DETOAST_DATUM_COPY(value));
				break;
			default:
				break;
		}
	}

	if (slot->tts_isnull[state->sql_attno - 1])
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("null value in column \"sql\" of foreign table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A task needs a SQL statement to run.")));
	sub.sql = PointerGetDatum(PG_DETOAST_DATUM_COPY(slot->tts_values[state->sql_attno - 1]));
	sqltext = TextDatumGetCString(sub.sql);
	if (sqltext[strspn(sqltext, " \t\n\r\f\v")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("empty value in column \"sql\" of foreign table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A task needs a SQL statement to run.")));
	pfree(sqltext);

	/* RETURNING shows the task as stored. */
	TaskStoreInsert(state->insert, &sub, store_values, store_nulls);
	TaskFdwNoteSubmission(sub.serverid, sub.userid, sub.has_run_at);
	ExecClearTuple(slot);
	TaskColumnMapProject(state->map, store_values, store_nulls,
						 slot->tts_values, slot->tts_isnull);
	MemoryContextSwitchTo(old);
	return ExecStoreVirtualTuple(slot);
}

/*
 * target_task finds the id of the task that planSlot's row identifies, in
 * *id, and returns whether the user may change that task.  It locks
 * nothing: a task the user may not change (a member of task_fdw_monitor
 * sees those) must not wait for the user's transaction to end.
 */
static bool
target_task(TaskModifyState *state, TupleTableSlot *planSlot, int64 *id)
{
	bool		isnull;
	Datum		ctid = ExecGetJunkAttribute(planSlot, state->ctid_attno, &isnull);
	Oid			userid;

	if (isnull)
		elog(ERROR, "ctid is NULL");
	*id = TaskStoreTaskIdAt(state->store, (ItemPointer) DatumGetPointer(ctid), &userid);
	return TaskStoreTaskVisible(userid);
}

/*
 * returning_slot fills slot, for RETURNING, with the foreign table's view
 * of the task store row tuple.
 */
static TupleTableSlot *
returning_slot(TaskModifyState *state, TupleTableSlot *slot, HeapTuple tuple)
{
	Datum		values[Natts_task];
	bool		nulls[Natts_task];

	heap_deform_tuple(tuple, RelationGetDescr(state->store), values, nulls);
	ExecClearTuple(slot);
	TaskColumnMapProject(state->map, values, nulls, slot->tts_values, slot->tts_isnull);
	return ExecStoreVirtualTuple(slot);
}

/*
 * taskExecForeignUpdate
 *		Cancel or reschedule one task.
 */
TupleTableSlot *
taskExecForeignUpdate(EState *estate, ResultRelInfo *rinfo,
					  TupleTableSlot *slot, TupleTableSlot *planSlot)
{
	TaskModifyState *state = rinfo->ri_FdwState;
	Relation	rel = rinfo->ri_RelationDesc;
	Datum		values[Natts_task];
	bool		nulls[Natts_task];
	HeapTuple	tuple;
	int64		id;
	char	   *current;
	bool		cancel = false;
	bool		reschedule = state->priority_attno != 0 || state->run_at_attno != 0;
	int			what = TFDW_XACT_LOCKED;

	slot_getallattrs(slot);
	if (state->state_attno != 0)
	{
		char	   *requested = slot->tts_isnull[state->state_attno - 1] ? NULL :
			TextDatumGetCString(slot->tts_values[state->state_attno - 1]);

		if (requested == NULL || strcmp(requested, TFDW_STATE_CANCELLED) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid new state \"%s\" for a task of foreign table \"%s\"",
							requested ? requested : "NULL", RelationGetRelationName(rel)),
					 errhint("The only state a task can be given is 'cancelled'.")));
		cancel = true;
	}
	if (state->priority_attno != 0 && slot->tts_isnull[state->priority_attno - 1])
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("null value in column \"priority\" of foreign table \"%s\"",
						RelationGetRelationName(rel))));

	if (!target_task(state, planSlot, &id))
		return NULL;
	tuple = TaskStoreLockTask(state->store, id);
	if (tuple == NULL)
		return NULL;
	heap_deform_tuple(tuple, RelationGetDescr(state->store), values, nulls);
	current = TextDatumGetCString(values[Anum_task_state - 1]);

	/* A finished task keeps its real outcome; a cancel is never an error. */
	if (cancel && TaskStateIsFinal(current))
		return NULL;
	if (!cancel && strcmp(current, TFDW_STATE_QUEUED) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot reschedule task " INT64_FORMAT ": it is %s", id, current),
				 errhint("Only queued tasks can be given a new priority or run_at; add WHERE state = 'queued'.")));

	if (strcmp(current, TFDW_STATE_RUNNING) == 0)
	{
		/* A cancel: the dispatcher cancels it on the remote after commit. */
		if (nulls[Anum_task_cancel_requested_at - 1])
		{
			values[Anum_task_cancel_requested_at - 1] =
				TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			nulls[Anum_task_cancel_requested_at - 1] = false;
		}
		what |= TFDW_XACT_CANCELLED;
	}
	else
	{
		/* Queued. */
		if (state->priority_attno != 0)
			values[Anum_task_priority - 1] = slot->tts_values[state->priority_attno - 1];
		if (state->run_at_attno != 0)
		{
			values[Anum_task_run_at - 1] = slot->tts_values[state->run_at_attno - 1];
			nulls[Anum_task_run_at - 1] = slot->tts_isnull[state->run_at_attno - 1];
			if (!nulls[Anum_task_run_at - 1])
				check_finite_run_at(rel, DatumGetTimestampTz(values[Anum_task_run_at - 1]));
		}
		if (reschedule)
			what |= TFDW_XACT_SUBMITTED;
		if (cancel)
		{
			values[Anum_task_state - 1] = CStringGetTextDatum(TFDW_STATE_CANCELLED);
			values[Anum_task_finished_at - 1] =
				TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			nulls[Anum_task_finished_at - 1] = false;
			values[Anum_task_error - 1] =
				CStringGetTextDatum(TFDW_CANCELLED_BEFORE_START);
			nulls[Anum_task_error - 1] = false;
			values[Anum_task_sqlstate - 1] = CStringGetTextDatum("57014");
			nulls[Anum_task_sqlstate - 1] = false;
			what |= TFDW_XACT_FINISHED;
		}
	}

	TaskFdwRequestDispatcher(what);
	tuple = TaskStoreChangeTask(state->store, id, values, nulls);
	if (what & TFDW_XACT_FINISHED)
		TaskStoreNotifyFinished(id, TFDW_STATE_CANCELLED);
	return returning_slot(state, slot, tuple);
}

/*
 * taskExecForeignDelete
 *		Remove one task, cancelling it first if it runs.
 */
TupleTableSlot *
taskExecForeignDelete(EState *estate, ResultRelInfo *rinfo,
					  TupleTableSlot *slot, TupleTableSlot *planSlot)
{
	TaskModifyState *state = rinfo->ri_FdwState;
	HeapTuple	tuple;
	int64		id;
	bool		isnull;
	char	   *current;

	if (!target_task(state, planSlot, &id))
		return NULL;
	tuple = TaskStoreDeleteTask(state->store, id);
	if (tuple == NULL)
		return NULL;
	current = TextDatumGetCString(heap_getattr(tuple, Anum_task_state,
											   RelationGetDescr(state->store), &isnull));
	TaskFdwRequestDispatcher(strcmp(current, TFDW_STATE_RUNNING) == 0
							 ? TFDW_XACT_LOCKED | TFDW_XACT_CANCELLED
							 : TFDW_XACT_LOCKED);
	return returning_slot(state, slot, tuple);
}

/*
 * taskEndForeignModify
 *		Finish an INSERT, UPDATE or DELETE.
 */
void
taskEndForeignModify(EState *estate, ResultRelInfo *rinfo)
{
	TaskModifyState *state = rinfo->ri_FdwState;

	if (state == NULL)
		return;
	if (state->insert)
		TaskStoreEndInsert(state->insert);
	if (state->store)
		table_close(state->store, NoLock);
}

/*
 * taskEndForeignInsert
 *		Finish a COPY into the foreign table.
 */
void
taskEndForeignInsert(EState *estate, ResultRelInfo *rinfo)
{
	taskEndForeignModify(estate, rinfo);
}
