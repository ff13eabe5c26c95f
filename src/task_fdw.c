/*-------------------------------------------------------------------------
 *
 * task_fdw.c
 *		  Module entry of task_fdw: initialisation, GUCs and the FDW handler.
 *
 * task_fdw runs SQL statements in the background.  A task is a row of a
 * foreign table of the task_fdw wrapper: INSERT submits it in the caller's
 * transaction, a dispatcher background worker runs it on the table's
 * server after commit, and SELECT reports its state and results.
 *
 * The library must be in shared_preload_libraries: the dispatchers and
 * their registry need shared memory and a launcher started by the
 * postmaster.
 *
 * IDENTIFICATION
 *		  src/task_fdw.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "foreign/fdwapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/memutils.h"

#include "task_fdw.h"

PG_MODULE_MAGIC;

bool		TaskFdwPreloaded = false;
int			TaskFdwMaxResultRows = 1000;
int			TaskFdwMaxResultBytes = 1024 * 1024;
int			TaskFdwIdleTimeout = 10000;
int			TaskFdwRecheckInterval = 10000;
int			TaskFdwClaimAhead = 256;
int			TaskFdwClaimAheadStall = 20;
int			TaskFdwMaxInterruptedAttempts = 3;
int			TaskFdwMaxNotices = 100;
int			TaskFdwMaxNoticeBytes = 64 * 1024;
int			TaskFdwRetention = 7 * SECS_PER_DAY;
int			TaskFdwMaxConnections = 100;
double		TaskFdwNotifyQueueLimit = 0.5;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(task_fdw_handler);

void		_PG_init(void);
static void task_fdw_shmem_request(void);
static void task_fdw_shmem_startup(void);

/*
 * _PG_init defines the GUCs and, when preloaded, asks for shared memory and
 * registers the launcher.
 */
void
_PG_init(void)
{
	DefineCustomIntVariable("task_fdw.max_result_rows",
							"Maximum number of result rows kept per task.",
							"Rows past the limit are counted in \"rows\" but not kept in \"result\".",
							&TaskFdwMaxResultRows,
							1000, 0, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.max_result_bytes",
							"Maximum size of the result kept per task.",
							NULL,
							&TaskFdwMaxResultBytes,
							1024 * 1024, 1024, MaxAllocSize / 4,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.idle_timeout",
							"Time after which a dispatcher with no work exits.",
							"0 keeps dispatchers running.",
							&TaskFdwIdleTimeout,
							10000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.recheck_interval",
							"Time between a dispatcher's checks of the queue when nothing wakes it.",
							"Committing submitters wake the dispatcher at once; this is a safety net.",
							&TaskFdwRecheckInterval,
							10000, 100, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.max_notices",
							"Maximum number of remote notices kept per task.",
							"Later notices are counted but not kept.",
							&TaskFdwMaxNotices,
							100, 0, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.max_notice_bytes",
							"Maximum total size of the remote notices kept per task.",
							NULL,
							&TaskFdwMaxNoticeBytes,
							64 * 1024, 0, MaxAllocSize / 4,
							PGC_SIGHUP, GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.retention",
							"Time after which finished tasks are removed.",
							"0 keeps finished tasks until they are deleted.",
							&TaskFdwRetention,
							7 * SECS_PER_DAY, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.max_connections",
							"Maximum number of connections that all dispatchers together open for tasks.",
							"Tasks wait in the queue while the limit is reached; 0 means no limit.",
							&TaskFdwMaxConnections,
							100, 0, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.claim_ahead",
							"Maximum number of short tasks a pooled connection claims ahead of the one it runs.",
							"Claimed tasks are recorded as running; 0 claims a task only when a connection is free.",
							&TaskFdwClaimAhead,
							256, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.claim_ahead_stall",
							"How long a task runs before the tasks claimed ahead of it go back to the queue.",
							"Four times as long as the pool's tasks usually take, if that is longer: other connections may be free for them.",
							&TaskFdwClaimAheadStall,
							20, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("task_fdw.max_interrupted_attempts",
							"Attempts after which an interrupted task with on_interrupt 'retry' is failed rather than queued again.",
							"A task's own max_attempts counts instead if it is higher.",
							&TaskFdwMaxInterruptedAttempts,
							3, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomRealVariable("task_fdw.notify_queue_limit",
							 "Fraction of the notification queue above which completion notifications are not sent.",
							 "A full queue would make every commit that notifies fail; 1 sends them until then.",
							 &TaskFdwNotifyQueueLimit,
							 0.5, 0.0, 1.0,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("task_fdw");

	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;

	TaskFdwPreloaded = true;
	RegisterXactCallback(TaskFdwXactCallback, NULL);
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = task_fdw_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = task_fdw_shmem_startup;
	TaskFdwRegisterLauncher();
	TaskFdwInstallUtilityHook();
}

/*
 * task_fdw_shmem_request asks for task_fdw's shared memory.
 */
static void
task_fdw_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	TaskFdwShmemRequest();
}

/*
 * task_fdw_shmem_startup sets up task_fdw's shared memory.
 */
static void
task_fdw_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	TaskFdwShmemStartup();
}

/*
 * TaskFdwCheckPreloaded raises an error unless task_fdw was preloaded.
 */
void
TaskFdwCheckPreloaded(void)
{
	if (!TaskFdwPreloaded || TaskFdwState == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("task_fdw must be loaded via shared_preload_libraries"),
				 errhint("Add task_fdw to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * task_fdw_handler
 *		Return the FdwRoutine of task_fdw.
 */
Datum
task_fdw_handler(PG_FUNCTION_ARGS)
{
	FdwRoutine *routine = makeNode(FdwRoutine);

	TaskFdwCheckPreloaded();

	routine->GetForeignRelSize = taskGetForeignRelSize;
	routine->GetForeignPaths = taskGetForeignPaths;
	routine->GetForeignPlan = taskGetForeignPlan;
	routine->BeginForeignScan = taskBeginForeignScan;
	routine->IterateForeignScan = taskIterateForeignScan;
	routine->ReScanForeignScan = taskReScanForeignScan;
	routine->EndForeignScan = taskEndForeignScan;
	routine->ExplainForeignScan = taskExplainForeignScan;

	routine->IsForeignRelUpdatable = taskIsForeignRelUpdatable;
	routine->PlanForeignModify = taskPlanForeignModify;
	routine->BeginForeignModify = taskBeginForeignModify;
	routine->AddForeignUpdateTargets = taskAddForeignUpdateTargets;
	routine->ExecForeignInsert = taskExecForeignInsert;
	routine->ExecForeignUpdate = taskExecForeignUpdate;
	routine->ExecForeignDelete = taskExecForeignDelete;
	routine->EndForeignModify = taskEndForeignModify;
	routine->BeginForeignInsert = taskBeginForeignInsert;
	routine->EndForeignInsert = taskEndForeignInsert;

	routine->ImportForeignSchema = taskImportForeignSchema;

	PG_RETURN_POINTER(routine);
}
