/*-------------------------------------------------------------------------
 *
 * modify.c
 *		  INSERT into a task_fdw foreign table: submitting tasks.
 *
 * Each inserted row becomes a queued task in the task store, written in the
 * inserting transaction, so a rolled-back INSERT leaves nothing.  Only "sql"
 * may be given; RETURNING shows the new task's id, state and submission
 * time.  The dispatcher is woken when the transaction commits.  COPY into
 * the foreign table submits tasks the same way.
 *
 * IDENTIFICATION
 *		  src/modify.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/sysattr.h"
#include "access/table.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "foreign/fdwapi.h"
#include "foreign/foreign.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "optimizer/planmain.h"
#include "parser/parsetree.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "task_fdw.h"
#include "compat.h"

/* Executor state of an INSERT or COPY into a foreign table. */
typedef struct TaskModifyState
{
	TaskColumnMap *map;
	AttrNumber	sql_attno;		/* the foreign table's "sql" column */
	Oid			serverid;
	Oid			userid;			/* the submitter */
	char	   *submitted_by;
	TaskInsertState *insert;
} TaskModifyState;

static TaskModifyState *begin_insert(ResultRelInfo *rinfo, EState *estate);
static AttrNumber sql_column(Relation rel, TaskColumnMap *map);
static void check_read_only(Relation rel, const TaskAttribute *attr);

/*
 * sql_column returns the attribute number of rel's "sql" column, raising an
 * error if it has none: there would be nothing to run.
 */
static AttrNumber
sql_column(Relation rel, TaskColumnMap *map)
{
	int			i;

	for (i = 0; i < map->natts; i++)
		if (map->attrs[i] && map->attrs[i]->task_attnum == Anum_task_sql)
			return i + 1;
	ereport(ERROR,
			(errcode(ERRCODE_FDW_COLUMN_NAME_NOT_FOUND),
			 errmsg("foreign table \"%s\" has no column \"sql\"",
					RelationGetRelationName(rel)),
			 errhint("Tasks can only be submitted through a foreign table that has the attribute \"sql text\".")));
	return InvalidAttrNumber;	/* keep compiler quiet */
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
				 errhint("Only \"sql\" can be given when submitting a task.")));
}

/*
 * taskIsForeignRelUpdatable
 *		Tasks can be inserted; UPDATE and DELETE are not supported.
 */
int
taskIsForeignRelUpdatable(Relation rel)
{
	return (1 << CMD_INSERT);
}

/*
 * taskPlanForeignModify
 *		Check an INSERT's column list: only writable attributes may be named.
 */
List *
taskPlanForeignModify(PlannerInfo *root, ModifyTable *plan,
					  Index resultRelation, int subplan_index)
{
	RangeTblEntry *rte = planner_rt_fetch(resultRelation, root);
	Relation	rel;
	TaskColumnMap *map;
	Bitmapset  *cols;
	int			col = -1;

	if (plan->operation != CMD_INSERT)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("task_fdw foreign tables support only INSERT and SELECT")));

	rel = table_open(rte->relid, NoLock);
	map = TaskColumnMapBuild(rel);
	(void) sql_column(rel, map);
	cols = tfdw_inserted_cols(root, rte);
	while ((col = bms_next_member(cols, col)) >= 0)
	{
		AttrNumber	attno = col + FirstLowInvalidHeapAttributeNumber;

		if (attno > 0 && map->attrs[attno - 1] != NULL)
			check_read_only(rel, map->attrs[attno - 1]);
	}
	table_close(rel, NoLock);
	return NIL;
}

/*
 * begin_insert prepares to submit tasks through rinfo's foreign table: it
 * resolves the submitter and checks their user mapping, so that a missing
 * one fails the INSERT rather than the task.
 */
static TaskModifyState *
begin_insert(ResultRelInfo *rinfo, EState *estate)
{
	Relation	rel = rinfo->ri_RelationDesc;
	TaskModifyState *state = palloc0(sizeof(TaskModifyState));

	TaskFdwCheckPreloaded();
	state->map = TaskColumnMapBuild(rel);
	state->sql_attno = sql_column(rel, state->map);
	state->serverid = GetForeignTable(RelationGetRelid(rel))->serverid;
	state->userid = tfdw_result_rel_user(rinfo, estate);
	state->submitted_by = GetUserNameFromId(state->userid, false);
	(void) GetUserMapping(state->userid, state->serverid);
	TaskFdwRequestDispatcher();
	state->insert = TaskStoreBeginInsert(estate);
	return state;
}

/*
 * taskBeginForeignModify
 *		Prepare an INSERT.
 */
void
taskBeginForeignModify(ModifyTableState *mtstate, ResultRelInfo *rinfo,
					   List *fdw_private, int subplan_index, int eflags)
{
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;
	rinfo->ri_FdwState = begin_insert(rinfo, mtstate->ps.state);
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
 */
TupleTableSlot *
taskExecForeignInsert(EState *estate, ResultRelInfo *rinfo,
					  TupleTableSlot *slot, TupleTableSlot *planSlot)
{
	TaskModifyState *state = rinfo->ri_FdwState;
	Relation	rel = rinfo->ri_RelationDesc;
	TimestampTz submitted_at = GetCurrentTransactionStartTimestamp();
	Datum		sql;
	char	   *sqltext;
	int64		id;
	int			i;

	slot_getallattrs(slot);
	for (i = 0; i < state->map->natts; i++)
		if (state->map->attrs[i] && !slot->tts_isnull[i])
			check_read_only(rel, state->map->attrs[i]);

	if (slot->tts_isnull[state->sql_attno - 1])
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("null value in column \"sql\" of foreign table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A task needs a SQL statement to run.")));
	/* A copy, detoasted: the slot is cleared below to show the new task. */
	sql = PointerGetDatum(PG_DETOAST_DATUM_COPY(slot->tts_values[state->sql_attno - 1]));
	sqltext = TextDatumGetCString(sql);
	if (sqltext[strspn(sqltext, " \t\n\r\f\v")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("empty value in column \"sql\" of foreign table \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A task needs a SQL statement to run.")));
	pfree(sqltext);

	id = TaskStoreInsert(state->insert, state->serverid, state->userid,
						 state->submitted_by, sql, submitted_at);

	/* What RETURNING can show of a task just submitted. */
	ExecClearTuple(slot);
	for (i = 0; i < state->map->natts; i++)
	{
		const TaskAttribute *attr = state->map->attrs[i];
		Datum		value = (Datum) 0;
		bool		isnull = false;

		switch (attr ? attr->task_attnum : InvalidAttrNumber)
		{
			case Anum_task_id:
				value = Int64GetDatum(id);
				break;
			case Anum_task_sql:
				value = sql;
				break;
			case Anum_task_state:
				value = CStringGetTextDatum(TFDW_STATE_QUEUED);
				break;
			case Anum_task_submitted_by:
				value = CStringGetTextDatum(state->submitted_by);
				break;
			case Anum_task_submitted_at:
				value = TimestampTzGetDatum(submitted_at);
				break;
			default:
				isnull = true;
				break;
		}
		slot->tts_values[i] = value;
		slot->tts_isnull[i] = isnull;
	}
	return ExecStoreVirtualTuple(slot);
}

/*
 * taskEndForeignModify
 *		Finish an INSERT.
 */
void
taskEndForeignModify(EState *estate, ResultRelInfo *rinfo)
{
	TaskModifyState *state = rinfo->ri_FdwState;

	if (state)
		TaskStoreEndInsert(state->insert);
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
