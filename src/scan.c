/*-------------------------------------------------------------------------
 *
 * scan.c
 *		  SELECT from a task_fdw foreign table: planning and executing a scan
 *		  of the task store.
 *
 * A foreign table on server S shows the tasks submitted through any
 * foreign table on S, wherever they run, and the tasks that run on S,
 * wherever they were submitted, as far as the current user may see them:
 * their own (and those of roles whose privileges they have), or all of
 * them for superusers; members of task_fdw_monitor see the other roles'
 * tasks too, without results, notices or error details.  A condition
 * "id = value" or "state = value" (a constant or a parameter) is pushed
 * down to an index scan of the task store's primary key or state index;
 * every condition is still checked on the rows.
 *
 * IDENTIFICATION
 *		  src/scan.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/explain.h"
#include "executor/executor.h"
#include "foreign/fdwapi.h"
#include "foreign/foreign.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/clauses.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/planmain.h"
#include "optimizer/restrictinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"

#include "task_fdw.h"
#include "compat.h"

/* Which index a scan uses; stored in the plan's fdw_private. */
typedef enum TaskScanKind
{
	TASK_SCAN_ALL,				/* every task of the server */
	TASK_SCAN_ID,				/* id = fdw_exprs[0] */
	TASK_SCAN_STATE				/* state = fdw_exprs[0] */
} TaskScanKind;

/* Planner-side information, in baserel->fdw_private. */
typedef struct TaskScanPlanInfo
{
	TaskScanKind kind;
	Expr	   *key;			/* the value compared with id or state */
} TaskScanPlanInfo;

/* Executor state of a scan. */
typedef struct TaskScanState
{
	Relation	store;			/* the task store */
	TaskColumnMap *map;
	Oid			serverid;
	TaskScanKind kind;
	ExprState  *key_state;
	char	   *wanted_state;	/* the state a state scan returns, or NULL */
	SysScanDesc scan;			/* NULL before the start, or if nothing matches */
	bool		started;
	MemoryContext rowcxt;		/* reset for every row */
	bool		monitor;		/* the user has task_fdw_monitor's privileges */
	Datum	   *values;			/* one task store row */
	bool	   *nulls;
	ItemPointerData tid;		/* where that row is */
} TaskScanState;

static bool is_done_const(Node *value);
static bool match_key(RelOptInfo *baserel, Oid relid, Expr *clause,
					  TaskScanPlanInfo *info);
static void start_scan(ForeignScanState *node, TaskScanState *state);
static bool next_visible_row(TaskScanState *state);

/*
 * match_key returns whether clause is "id = value" or "state = value" with
 * a value computable before the scan, and if so fills info.
 */
static bool
match_key(RelOptInfo *baserel, Oid relid, Expr *clause, TaskScanPlanInfo *info)
{
	OpExpr	   *op;
	Node	   *left;
	Node	   *right;
	Var		   *var;
	Node	   *value;
	char	   *attname;

	if (!IsA(clause, OpExpr))
		return false;
	op = (OpExpr *) clause;
	if (list_length(op->args) != 2)
		return false;
	left = linitial(op->args);
	right = lsecond(op->args);
	if (IsA(left, Var) && ((Var *) left)->varno == baserel->relid)
	{
		var = (Var *) left;
		value = right;
	}
	else if (IsA(right, Var) && ((Var *) right)->varno == baserel->relid)
	{
		var = (Var *) right;
		value = left;
	}
	else
		return false;

	if (!is_pseudo_constant_clause(value) || contain_volatile_functions(value) ||
		var->varattno <= 0)
		return false;
	attname = get_attname(relid, var->varattno, false);

	if (strcmp(attname, "id") == 0 &&
		(op->opfuncid == F_INT8EQ || op->opfuncid == F_INT84EQ ||
		 op->opfuncid == F_INT82EQ || op->opfuncid == F_INT48EQ ||
		 op->opfuncid == F_INT28EQ))
		info->kind = TASK_SCAN_ID;
	else if (strcmp(attname, "state") == 0 && op->opfuncid == F_TEXTEQ &&
			 !is_done_const(value))
		info->kind = TASK_SCAN_STATE;
	else
		return false;
	info->key = (Expr *) value;
	return true;
}

/*
 * is_done_const returns whether value is the constant 'done': no index
 * holds done tasks (see TaskStoreBeginStateScan), so a condition on it is
 * no better a key than none.
 */
static bool
is_done_const(Node *value)
{
	Const	   *c = (Const *) value;

	return IsA(value, Const) && !c->constisnull && c->consttype == TEXTOID &&
		TaskStateIs(c->constvalue, TFDW_STATE_DONE);
}

/*
 * taskGetForeignRelSize
 *		Estimate the number of rows and pick the pushed-down condition.
 */
void
taskGetForeignRelSize(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	TaskScanPlanInfo *info = palloc0(sizeof(TaskScanPlanInfo));
	ListCell   *lc;

	info->kind = TASK_SCAN_ALL;
	foreach(lc, baserel->baserestrictinfo)
	{
		RestrictInfo *rinfo = lfirst_node(RestrictInfo, lc);
		TaskScanPlanInfo candidate;

		if (match_key(baserel, foreigntableid, rinfo->clause, &candidate) &&
			(info->kind == TASK_SCAN_ALL || candidate.kind == TASK_SCAN_ID))
			*info = candidate;
	}
	baserel->fdw_private = info;
	baserel->rows = info->kind == TASK_SCAN_ID ? 1 :
		info->kind == TASK_SCAN_STATE ? 100 : 1000;
}

/*
 * taskGetForeignPaths
 *		Add the one access path of a task scan.
 */
void
taskGetForeignPaths(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	Cost		startup = 1;
	Cost		total = startup + baserel->rows * cpu_tuple_cost * 4;

	add_path(baserel, (Path *)
			 tfdw_create_foreignscan_path(root, baserel, baserel->rows,
										  startup, total, NIL));
}

/*
 * taskGetForeignPlan
 *		Build the ForeignScan plan; every condition stays as a filter.
 */
ForeignScan *
taskGetForeignPlan(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid,
				   ForeignPath *best_path, List *tlist, List *scan_clauses,
				   Plan *outer_plan)
{
	TaskScanPlanInfo *info = baserel->fdw_private;
	List	   *fdw_exprs = NIL;

	scan_clauses = extract_actual_clauses(scan_clauses, false);
	if (info->kind != TASK_SCAN_ALL)
		fdw_exprs = list_make1(info->key);
	return make_foreignscan(tlist, scan_clauses, baserel->relid, fdw_exprs,
							list_make1(makeInteger(info->kind)),
							NIL, NIL, outer_plan);
}

/*
 * taskBeginForeignScan
 *		Open the task store for a scan.
 */
void
taskBeginForeignScan(ForeignScanState *node, int eflags)
{
	ForeignScan *plan = (ForeignScan *) node->ss.ps.plan;
	Relation	rel = node->ss.ss_currentRelation;
	TaskScanState *state;
	int			natts;

	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;

	state = palloc0(sizeof(TaskScanState));
	state->store = TaskStoreOpen(AccessShareLock);
	state->map = TaskColumnMapBuild(rel);
	state->serverid = GetForeignTable(RelationGetRelid(rel))->serverid;
	state->kind = intVal(linitial(plan->fdw_private));
	state->monitor = TaskStoreIsMonitor();
	if (state->kind != TASK_SCAN_ALL)
		state->key_state = ExecInitExpr(linitial(plan->fdw_exprs), (PlanState *) node);
	state->rowcxt = AllocSetContextCreate(node->ss.ps.state->es_query_cxt,
										  "task_fdw scan row", ALLOCSET_SMALL_SIZES);
	natts = RelationGetDescr(state->store)->natts;
	state->values = palloc(sizeof(Datum) * natts);
	state->nulls = palloc(sizeof(bool) * natts);
	node->fdw_state = state;
}

/*
 * start_scan begins the index or full scan of the task store, with the key
 * value computed now (it may be a parameter).
 */
static void
start_scan(ForeignScanState *node, TaskScanState *state)
{
	ExprContext *econtext = node->ss.ps.ps_ExprContext;
	ScanKeyData key;
	Oid			index = InvalidOid;
	int			nkeys = 0;

	if (state->kind != TASK_SCAN_ALL)
	{
		bool		isnull;
		Datum		value = ExecEvalExprSwitchContext(state->key_state, econtext, &isnull);

		if (isnull)
			return;				/* "= NULL" matches nothing */
		if (state->kind == TASK_SCAN_ID)
		{
			Oid			type = exprType((Node *) state->key_state->expr);
			int64		id = type == INT8OID ? DatumGetInt64(value) :
				type == INT4OID ? DatumGetInt32(value) : DatumGetInt16(value);

			index = RelationGetPrimaryKeyIndex(state->store);
			ScanKeyInit(&key, Anum_task_id, BTEqualStrategyNumber, F_INT8EQ,
						Int64GetDatum(id));
		}
		else
		{
			state->wanted_state = TextDatumGetCString(value);
			state->scan = TaskStoreBeginStateScan(state->store,
												  node->ss.ps.state->es_snapshot,
												  state->wanted_state);
			return;
		}
		nkeys = 1;
	}
	state->scan = systable_beginscan(state->store, index, OidIsValid(index),
									 node->ss.ps.state->es_snapshot, nkeys, &key);
}

/*
 * taskIterateForeignScan
 *		Return the next task the table shows that the user may see.
 *
 * The executor calls this in a per-tuple context that it resets for every
 * row, but the index scan keeps memory it allocates (in any call, not only at
 * its start) until it ends; so the scan runs in the query's context, and only
 * the copy of each row goes to the row context.
 */
TupleTableSlot *
taskIterateForeignScan(ForeignScanState *node)
{
	TaskScanState *state = node->fdw_state;
	TupleTableSlot *slot = node->ss.ss_ScanTupleSlot;
	MemoryContext old = MemoryContextSwitchTo(node->ss.ps.state->es_query_cxt);

	ExecClearTuple(slot);
	if (!state->started)
	{
		start_scan(node, state);
		state->started = true;
	}
	if (state->scan != NULL && next_visible_row(state))
	{
		TupleDesc	desc = slot->tts_tupleDescriptor;
		Datum	   *values = MemoryContextAlloc(state->rowcxt, sizeof(Datum) * desc->natts);
		bool	   *nulls = MemoryContextAlloc(state->rowcxt, sizeof(bool) * desc->natts);
		HeapTuple	tuple;

		/*
		 * A heap tuple rather than a virtual one, so that its ctid (the row
		 * of the task store) identifies the task to UPDATE and DELETE.
		 */
		TaskColumnMapProject(state->map, state->values, state->nulls, values, nulls);
		MemoryContextSwitchTo(state->rowcxt);
		tuple = heap_form_tuple(desc, values, nulls);
		tuple->t_self = state->tid;
		tuple->t_tableOid = RelationGetRelid(node->ss.ss_currentRelation);
		ExecStoreHeapTuple(tuple, slot, false);
	}
	MemoryContextSwitchTo(old);
	return slot;
}

/*
 * next_visible_row reads the next task that the table shows and the user
 * may see into state->values and state->nulls, and returns false at the end.
 * The table shows the tasks that run on its server or were submitted
 * through it (through any table on its server).
 */
static bool
next_visible_row(TaskScanState *state)
{
	/* What task_fdw_monitor does not see of other roles' tasks. */
	static const AttrNumber results[] = {
		Anum_task_result, Anum_task_result_truncated, Anum_task_notices,
		Anum_task_error_detail, Anum_task_error_hint, Anum_task_error_context
	};
	TupleDesc	store_desc = RelationGetDescr(state->store);
	HeapTuple	tup;

	MemoryContextReset(state->rowcxt);
	while ((tup = systable_getnext(state->scan)) != NULL)
	{
		MemoryContext old;
		bool		isnull;
		bool		full;
		int			i;

		if (state->wanted_state != NULL &&
			!TaskStoreRowInState(tup, store_desc, state->wanted_state))
			continue;

		if (DatumGetObjectId(heap_getattr(tup, Anum_task_server_id, store_desc,
										  &isnull)) != state->serverid &&
			DatumGetObjectId(heap_getattr(tup, Anum_task_origin_server_id, store_desc,
										  &isnull)) != state->serverid)
			continue;
		full = TaskStoreTaskVisible(DatumGetObjectId(heap_getattr(tup, Anum_task_userid,
																  store_desc, &isnull)));
		if (!full && !state->monitor)
			continue;

		old = MemoryContextSwitchTo(state->rowcxt);
		state->tid = tup->t_self;
		heap_deform_tuple(heap_copytuple(tup), store_desc, state->values, state->nulls);
		MemoryContextSwitchTo(old);
		if (!full)
			for (i = 0; i < lengthof(results); i++)
				state->nulls[results[i] - 1] = true;
		return true;
	}
	return false;
}

/*
 * taskReScanForeignScan
 *		Restart the scan; the key is computed again.
 */
void
taskReScanForeignScan(ForeignScanState *node)
{
	TaskScanState *state = node->fdw_state;

	if (state->scan)
		systable_endscan(state->scan);
	state->scan = NULL;
	state->started = false;
}

/*
 * taskEndForeignScan
 *		End the scan and close the task store.
 */
void
taskEndForeignScan(ForeignScanState *node)
{
	TaskScanState *state = node->fdw_state;

	if (state == NULL)
		return;
	if (state->scan)
		systable_endscan(state->scan);
	table_close(state->store, AccessShareLock);
}

/*
 * taskExplainForeignScan
 *		Show which condition was pushed down to the task store's index.
 */
void
taskExplainForeignScan(ForeignScanState *node, ExplainState *es)
{
	ForeignScan *plan = (ForeignScan *) node->ss.ps.plan;
	TaskScanKind kind = intVal(linitial(plan->fdw_private));
	List	   *context;
	char	   *value;

	if (kind == TASK_SCAN_ALL)
	{
		ExplainPropertyText("Task Scan", "all tasks of the server", es);
		return;
	}
	context = set_deparse_context_plan(es->deparse_cxt, (Plan *) plan, NIL);
	value = deparse_expression(linitial(plan->fdw_exprs), context, false, false);
	ExplainPropertyText("Task Index Cond",
						psprintf("%s = %s", kind == TASK_SCAN_ID ? "id" : "state", value),
						es);
}
