/*-------------------------------------------------------------------------
 *
 * attrs.c
 *		  The task attribute contract: which columns a foreign table of
 *		  task_fdw may have, their types, and where they live in the task store.
 *
 * A foreign table may declare any subset of the attributes in any order.
 * Columns are checked when the table is created or altered (through an
 * event trigger calling task_fdw.check_table) and again when a query uses
 * the table, so a table created while the trigger was disabled cannot read
 * garbage.
 *
 * IDENTIFICATION
 *		  src/attrs.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_foreign_server.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "foreign/foreign.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "task_fdw.h"

/* The contract.  Names and types must not change; add, never remove. */
static const TaskAttribute task_attributes[] = {
	{"id", INT8OID, Anum_task_id, false, false},
	{"sql", TEXTOID, Anum_task_sql, true, false},
	{"state", TEXTOID, Anum_task_state, false, true},
	{"submitted_by", TEXTOID, Anum_task_submitted_by, false, false},
	{"submitted_at", TIMESTAMPTZOID, Anum_task_submitted_at, false, false},
	{"started_at", TIMESTAMPTZOID, Anum_task_started_at, false, false},
	{"finished_at", TIMESTAMPTZOID, Anum_task_finished_at, false, false},
	{"remote_pid", INT4OID, Anum_task_remote_pid, false, false},
	{"command_tag", TEXTOID, Anum_task_command_tag, false, false},
	{"rows", INT8OID, Anum_task_rows, false, false},
	{"result", JSONBOID, Anum_task_result, false, false},
	{"result_truncated", BOOLOID, Anum_task_result_truncated, false, false},
	{"error", TEXTOID, Anum_task_error, false, false},
	{"sqlstate", TEXTOID, Anum_task_sqlstate, false, false},
	{"error_detail", TEXTOID, Anum_task_error_detail, false, false},
	{"error_hint", TEXTOID, Anum_task_error_hint, false, false},
	{"error_context", TEXTOID, Anum_task_error_context, false, false},
	{"priority", INT4OID, Anum_task_priority, true, true},
	{"run_at", TIMESTAMPTZOID, Anum_task_run_at, true, true},
	{"timeout", INTERVALOID, Anum_task_timeout, true, false},
	{"max_attempts", INT4OID, Anum_task_max_attempts, true, false},
	{"attempts", INT4OID, Anum_task_attempts, false, false},
	{"batch", TEXTOID, Anum_task_batch, true, false},
	{"notices", TEXTARRAYOID, Anum_task_notices, false, false},
	/* The name of the server the task runs on (see TaskColumnMapProject). */
	{"server", TEXTOID, Anum_task_server_id, true, false},
	{NULL, InvalidOid, InvalidAttrNumber, false, false}
};

PG_FUNCTION_INFO_V1(task_fdw_check_table);

static const char *attribute_list(void);
static Datum server_name_of(TaskColumnMap *map, Oid serverid);

/*
 * TaskAttributeLookup returns the attribute called name, or NULL.
 */
const TaskAttribute *
TaskAttributeLookup(const char *name)
{
	const TaskAttribute *attr;

	for (attr = task_attributes; attr->name; attr++)
		if (strcmp(attr->name, name) == 0)
			return attr;
	return NULL;
}

/*
 * attribute_list returns "id bigint, sql text, ..." for error hints.
 */
static const char *
attribute_list(void)
{
	const TaskAttribute *attr;
	StringInfoData buf;

	initStringInfo(&buf);
	for (attr = task_attributes; attr->name; attr++)
		appendStringInfo(&buf, "%s%s %s", buf.len > 0 ? ", " : "",
						 attr->name, format_type_be(attr->typid));
	return buf.data;
}

/*
 * TaskColumnMapBuild maps each column of the foreign table rel to its task
 * attribute, raising an error for a column that is not one.
 */
TaskColumnMap *
TaskColumnMapBuild(Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	TaskColumnMap *map = palloc(sizeof(TaskColumnMap));
	int			i;

	map->natts = tupdesc->natts;
	map->attrs = palloc0(sizeof(TaskAttribute *) * tupdesc->natts);
	map->cxt = CurrentMemoryContext;
	map->nservers = 0;
	map->max_servers = 4;
	map->server_oids = palloc(sizeof(Oid) * map->max_servers);
	map->server_names = palloc(sizeof(Datum) * map->max_servers);
	for (i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const TaskAttribute *attr;

		if (att->attisdropped)
			continue;
		attr = TaskAttributeLookup(NameStr(att->attname));
		if (attr == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FDW_INVALID_COLUMN_NAME),
					 errmsg("column \"%s\" of foreign table \"%s\" is not a task attribute",
							NameStr(att->attname), RelationGetRelationName(rel)),
					 errhint("Task attributes are: %s.", attribute_list())));
		if (att->atttypid != attr->typid)
			ereport(ERROR,
					(errcode(ERRCODE_FDW_INVALID_DATA_TYPE),
					 errmsg("column \"%s\" of foreign table \"%s\" must have type %s, not %s",
							NameStr(att->attname), RelationGetRelationName(rel),
							format_type_be(attr->typid),
							format_type_be(att->atttypid))));
		map->attrs[i] = attr;
	}
	return map;
}

/*
 * TaskFdwServerName returns the name of foreign server serverid, or NULL if
 * there is no such server (it was dropped).
 */
char *
TaskFdwServerName(Oid serverid)
{
	HeapTuple	tup = SearchSysCache1(FOREIGNSERVEROID, ObjectIdGetDatum(serverid));
	char	   *name;

	if (!HeapTupleIsValid(tup))
		return NULL;
	name = pstrdup(NameStr(((Form_pg_foreign_server) GETSTRUCT(tup))->srvname));
	ReleaseSysCache(tup);
	return name;
}

/*
 * server_name_of returns the name of server serverid as text, or 0 if it
 * was dropped, looking it up only the first time map meets it: rows of a
 * few servers alternate in a scan, and the names live as long as the map.
 */
static Datum
server_name_of(TaskColumnMap *map, Oid serverid)
{
	MemoryContext old;
	char	   *name;
	int			i;

	for (i = 0; i < map->nservers; i++)
		if (map->server_oids[i] == serverid)
			return map->server_names[i];
	old = MemoryContextSwitchTo(map->cxt);
	if (map->nservers == map->max_servers)
	{
		map->max_servers *= 2;
		map->server_oids = repalloc(map->server_oids, sizeof(Oid) * map->max_servers);
		map->server_names = repalloc(map->server_names, sizeof(Datum) * map->max_servers);
	}
	name = TaskFdwServerName(serverid);
	map->server_oids[map->nservers] = serverid;
	map->server_names[map->nservers] = name ? CStringGetTextDatum(name) : (Datum) 0;
	MemoryContextSwitchTo(old);
	return map->server_names[map->nservers++];
}

/*
 * TaskColumnMapProject fills values and nulls, one per column of the
 * foreign table, from a task store row (store_values and store_nulls).
 */
void
TaskColumnMapProject(TaskColumnMap *map, const Datum *store_values,
					 const bool *store_nulls, Datum *values, bool *nulls)
{
	int			i;

	for (i = 0; i < map->natts; i++)
	{
		const TaskAttribute *attr = map->attrs[i];

		nulls[i] = attr == NULL || store_nulls[attr->task_attnum - 1];
		values[i] = nulls[i] ? (Datum) 0 : store_values[attr->task_attnum - 1];
		if (!nulls[i] && attr->task_attnum == Anum_task_server_id)
		{
			values[i] = server_name_of(map, DatumGetObjectId(values[i]));
			nulls[i] = values[i] == (Datum) 0;
		}
	}
}

/*
 * IsTaskFdwServer returns whether serverid belongs to the task_fdw wrapper.
 */
bool
IsTaskFdwServer(Oid serverid)
{
	ForeignServer *server = GetForeignServer(serverid);
	ForeignDataWrapper *fdw = GetForeignDataWrapper(server->fdwid);

	return strcmp(fdw->fdwname, "task_fdw") == 0;
}

/*
 * task_fdw_check_table
 *		Check the columns of a foreign table if it belongs to task_fdw.
 */
Datum
task_fdw_check_table(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;

	if (get_rel_relkind(relid) != RELKIND_FOREIGN_TABLE)
		PG_RETURN_VOID();
	if (!IsTaskFdwServer(GetForeignTable(relid)->serverid))
		PG_RETURN_VOID();

	rel = relation_open(relid, AccessShareLock);
	(void) TaskColumnMapBuild(rel);
	relation_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/*
 * TaskStoreLock locks the task store, task_fdw.task, with lockmode and
 * returns its OID, or InvalidOid if the extension is not installed: also
 * when a transaction that dropped it committed while this one waited for
 * the lock.  With nowait it does not wait: if another transaction holds a
 * conflicting lock, it returns InvalidOid and sets *busy.
 */
Oid
TaskStoreLock(LOCKMODE lockmode, bool nowait, bool *busy)
{
	if (busy)
		*busy = false;
	for (;;)
	{
		Oid			nspid = get_namespace_oid("task_fdw", true);
		Oid			relid = OidIsValid(nspid) ? get_relname_relid("task", nspid) : InvalidOid;

		if (!OidIsValid(relid))
			return InvalidOid;
		if (!nowait)
			LockRelationOid(relid, lockmode);
		else if (!ConditionalLockRelationOid(relid, lockmode))
		{
			*busy = true;
			return InvalidOid;
		}
		/* Taking the lock read the catalog changes committed meanwhile. */
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
			return relid;
		/* Dropped while this transaction waited: look for it again. */
		UnlockRelationOid(relid, lockmode);
	}
}

/*
 * TaskStoreIsCurrent returns whether rel, the task store, is the one this
 * library expects, and not one an older version installed that ALTER
 * EXTENSION UPDATE has not brought up to date yet.
 */
bool
TaskStoreIsCurrent(Relation rel)
{
	return RelationGetNumberOfAttributes(rel) == Natts_task;
}

/*
 * TaskStoreOpen opens the task store with lockmode, raising an error when
 * the extension is not installed, or when the store is not the one this
 * library expects: the extension was installed by an older version and not
 * updated since.
 */
Relation
TaskStoreOpen(LOCKMODE lockmode)
{
	Oid			relid = TaskStoreLock(lockmode, false, NULL);
	Relation	rel;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"task_fdw\" is not installed in this database"),
				 errhint("Run CREATE EXTENSION task_fdw.")));
	rel = table_open(relid, NoLock);
	if (!TaskStoreIsCurrent(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"task_fdw\" must be updated before it can be used"),
				 errdetail("The installed version of the extension is older than its library."),
				 errhint("Run ALTER EXTENSION task_fdw UPDATE.")));
	return rel;
}

/*
 * TaskStoreIndex returns the OID of the task store's index indexname.
 */
Oid
TaskStoreIndex(const char *indexname)
{
	Oid			relid = get_relname_relid(indexname, get_namespace_oid("task_fdw", false));

	if (!OidIsValid(relid))
		elog(ERROR, "index task_fdw.%s of the task store is missing", indexname);
	return relid;
}

/*
 * taskImportForeignSchema
 *		Create the foreign table "tasks" with every task attribute.
 *
 * The remote schema must be called task_fdw; LIMIT TO and EXCEPT apply to
 * the one table name, tasks.
 */
List *
taskImportForeignSchema(ImportForeignSchemaStmt *stmt, Oid serverOid)
{
	const TaskAttribute *attr;
	StringInfoData buf;
	ListCell   *lc;
	bool		listed = false;

	if (strcmp(stmt->remote_schema, "task_fdw") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_SCHEMA_NOT_FOUND),
				 errmsg("schema \"%s\" is not available on foreign server \"%s\"",
						stmt->remote_schema, stmt->server_name),
				 errhint("Import schema \"task_fdw\", which holds the table \"tasks\".")));

	foreach(lc, stmt->table_list)
		if (strcmp(((RangeVar *) lfirst(lc))->relname, "tasks") == 0)
			listed = true;
	if ((stmt->list_type == FDW_IMPORT_SCHEMA_LIMIT_TO && !listed) ||
		(stmt->list_type == FDW_IMPORT_SCHEMA_EXCEPT && listed))
		return NIL;

	initStringInfo(&buf);
	appendStringInfo(&buf, "CREATE FOREIGN TABLE %s (", quote_identifier("tasks"));
	for (attr = task_attributes; attr->name; attr++)
		appendStringInfo(&buf, "%s%s %s", attr == task_attributes ? "" : ", ",
						 quote_identifier(attr->name), format_type_be(attr->typid));
	appendStringInfo(&buf, ") SERVER %s", quote_identifier(stmt->server_name));
	return list_make1(buf.data);
}
