/*-------------------------------------------------------------------------
 *
 * utility.c
 *		  DDL that concerns task_fdw: refusing DROP EXTENSION while tasks are
 *		  unfinished, and keeping dispatchers out of the way of DROP DATABASE
 *		  and ALTER DATABASE ... RENAME.
 *
 * A ProcessUtility hook, installed when the library is preloaded, looks at
 * those statements before PostgreSQL runs them:
 *	- DROP EXTENSION task_fdw fails while the database has queued or running
 *	  tasks, which would otherwise be lost with their records;
 *	- DROP DATABASE and renaming a database need it to have no other
 *	  sessions; its dispatcher is one, so it is asked to exit first and is
 *	  not started again until a task is submitted there;
 *	- ALTER EXTENSION task_fdw UPDATE starts the dispatcher once it
 *	  commits, as one stops while the extension is older than the library.
 *
 * IDENTIFICATION
 *		  src/utility.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"

#include "task_fdw.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

static void task_fdw_process_utility(PlannedStmt *pstmt, const char *queryString,
									 bool readOnlyTree, ProcessUtilityContext context,
									 ParamListInfo params, QueryEnvironment *queryEnv,
									 DestReceiver *dest, QueryCompletion *qc);
static void check_drop_extension(DropStmt *stmt);

/*
 * TaskFdwInstallUtilityHook installs the ProcessUtility hook.
 */
void
TaskFdwInstallUtilityHook(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = task_fdw_process_utility;
}

/*
 * check_drop_extension raises an error when stmt would drop task_fdw from
 * this database while it has queued or running tasks.
 */
static void
check_drop_extension(DropStmt *stmt)
{
	ListCell   *lc;
	int64		unfinished;

	foreach(lc, stmt->objects)
	{
		if (strcmp(strVal(lfirst(lc)), "task_fdw") != 0 ||
			!OidIsValid(get_extension_oid("task_fdw", true)))
			continue;
		unfinished = TaskStoreCountUnfinished();
		if (unfinished > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot drop extension task_fdw while tasks are queued or running"),
					 errdetail("The database has " INT64_FORMAT " queued or running tasks, whose records would be lost.",
							   unfinished),
					 errhint("Wait for the tasks to finish, or cancel or delete them first (a superuser sees all tasks through the foreign tables).")));
		/* Once the drop commits, the dispatcher finds the store gone and exits. */
		TaskFdwRequestDispatcher(TFDW_XACT_SUBMITTED);
	}
}

/*
 * task_fdw_process_utility looks at the statements task_fdw cares about,
 * then runs the statement as PostgreSQL would.
 */
static void
task_fdw_process_utility(PlannedStmt *pstmt, const char *queryString,
						 bool readOnlyTree, ProcessUtilityContext context,
						 ParamListInfo params, QueryEnvironment *queryEnv,
						 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropStmt) &&
		((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
		check_drop_extension((DropStmt *) parsetree);
	else if (IsA(parsetree, AlterExtensionStmt) &&
			 strcmp(((AlterExtensionStmt *) parsetree)->extname, "task_fdw") == 0)
		TaskFdwRequestDispatcher(TFDW_XACT_SUBMITTED);	/* run what was queued */
	else if (IsA(parsetree, DropdbStmt))
		TaskFdwStopDispatcher(get_database_oid(((DropdbStmt *) parsetree)->dbname, true));
	else if (IsA(parsetree, RenameStmt) &&
			 ((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
		TaskFdwStopDispatcher(get_database_oid(((RenameStmt *) parsetree)->subname, true));

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
							 queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}
