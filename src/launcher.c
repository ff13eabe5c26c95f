/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		  The launcher background worker: starts a dispatcher for every
 *		  database that wants one, and starts it again if it dies.
 *
 * The launcher is registered when task_fdw is preloaded.  At start (so also
 * after a server restart or crash) it asks for a dispatcher in every database
 * that accepts connections; a dispatcher that finds no task_fdw or no work
 * in its database exits and frees its slot.  Afterwards the launcher sleeps
 * on its latch, which submitting backends set when a database without a
 * running dispatcher gets new tasks, and which the postmaster sets (through
 * bgw_notify_pid) when a dispatcher starts or stops.
 *
 * IDENTIFICATION
 *		  src/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "task_fdw.h"
#include "compat.h"

/* A dispatcher that failed to start is tried again after this long. */
#define RESTART_DELAY_MS	1000

/* Launcher-local knowledge about one slot's dispatcher. */
typedef struct LauncherSlot
{
	BackgroundWorkerHandle *handle; /* last dispatcher started, or NULL */
	TimestampTz last_start;
} LauncherSlot;

PGDLLEXPORT void TaskFdwLauncherMain(Datum main_arg);

static void launcher_detach(int code, Datum arg);
static void want_all_databases(void);
static bool database_exists(Oid dboid);
static bool start_dispatcher(DispatcherSlot *slot, LauncherSlot *local);
static long start_wanted_dispatchers(LauncherSlot *locals);

/*
 * TaskFdwRegisterLauncher registers the launcher; called while preloading.
 */
void
TaskFdwRegisterLauncher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "task_fdw");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "TaskFdwLauncherMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "task_fdw launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "task_fdw launcher");
	RegisterBackgroundWorker(&worker);
}

/*
 * launcher_detach forgets the launcher in shared memory as it exits.
 */
static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	if (TaskFdwState->launcher_pid == MyProcPid)
	{
		TaskFdwState->launcher_pid = 0;
		TaskFdwState->launcher_procno = -1;
	}
	LWLockRelease(TaskFdwState->lock);
}

/*
 * want_all_databases marks every database that accepts connections as
 * wanting a dispatcher, so that queued tasks run after a restart.
 */
static void
want_all_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;
	ListCell   *lc;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		/* The list outlives the transaction. */
		if (db->datallowconn && !db->datistemplate)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			dbs = lappend_oid(dbs, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		DispatcherSlot *slot = NULL;
		int			i;

		for (i = 0; i < TaskFdwState->nslots && slot == NULL; i++)
			if (TaskFdwState->slots[i].dboid == dboid)
				slot = &TaskFdwState->slots[i];
		for (i = 0; i < TaskFdwState->nslots && slot == NULL; i++)
			if (!OidIsValid(TaskFdwState->slots[i].dboid))
				slot = &TaskFdwState->slots[i];
		if (slot == NULL)
			break;
		slot->dboid = dboid;
		slot->wanted = true;
	}
	LWLockRelease(TaskFdwState->lock);
	list_free(dbs);
}

/*
 * database_exists returns whether the database dboid still exists.
 */
static bool
database_exists(Oid dboid)
{
	bool		exists;

	StartTransactionCommand();
	exists = SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid));
	CommitTransactionCommand();
	return exists;
}

/*
 * start_dispatcher registers a dispatcher for slot's database and returns
 * whether the postmaster accepted it.
 */
static bool
start_dispatcher(DispatcherSlot *slot, LauncherSlot *local)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "task_fdw");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "TaskFdwDispatcherMain");
	snprintf(worker.bgw_name, BGW_MAXLEN, "task_fdw dispatcher for database %u",
			 slot->dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "task_fdw dispatcher");
	worker.bgw_main_arg = ObjectIdGetDatum(slot->dboid);
	worker.bgw_notify_pid = MyProcPid;

	if (local->handle)
		pfree(local->handle);
	local->handle = NULL;
	local->last_start = GetCurrentTimestamp();
	return RegisterDynamicBackgroundWorker(&worker, &local->handle);
}

/*
 * start_wanted_dispatchers starts a dispatcher for each wanted slot that has
 * none, and returns how long to sleep before trying again (-1: no need).
 */
static long
start_wanted_dispatchers(LauncherSlot *locals)
{
	long		next = -1;
	int			i;

	for (i = 0; i < TaskFdwState->nslots; i++)
	{
		DispatcherSlot *slot = &TaskFdwState->slots[i];
		LauncherSlot *local = &locals[i];
		Oid			dboid;
		bool		wanted;
		bool		clean_exit;
		pid_t		pid;
		pid_t		worker_pid;
		long		since;

		LWLockAcquire(TaskFdwState->lock, LW_SHARED);
		dboid = slot->dboid;
		wanted = slot->wanted;
		clean_exit = slot->clean_exit;
		pid = slot->pid;
		LWLockRelease(TaskFdwState->lock);

		if (!OidIsValid(dboid) || !wanted || pid != 0)
			continue;

		/* One that is starting will attach by itself. */
		if (local->handle &&
			GetBackgroundWorkerPid(local->handle, &worker_pid) != BGWH_STOPPED)
			continue;

		/* Only a dispatcher that died is restarted with a delay. */
		since = TimestampDifferenceMilliseconds(local->last_start, GetCurrentTimestamp());
		if (!clean_exit && local->last_start != 0 && since < RESTART_DELAY_MS)
		{
			long		wait = RESTART_DELAY_MS - since;

			next = (next < 0 || wait < next) ? wait : next;
			continue;
		}

		if (!database_exists(dboid))
		{
			LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
			if (slot->dboid == dboid && slot->pid == 0)
			{
				slot->dboid = InvalidOid;
				slot->wanted = false;
			}
			LWLockRelease(TaskFdwState->lock);
			continue;
		}

		if (!start_dispatcher(slot, local))
		{
			ereport(WARNING,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("task_fdw could not start a dispatcher for database %u", dboid),
					 errhint("Increase max_worker_processes.")));
			next = (next < 0 || RESTART_DELAY_MS < next) ? RESTART_DELAY_MS : next;
		}
	}
	return next;
}

/*
 * TaskFdwLauncherMain is the launcher's entry point.
 */
void
TaskFdwLauncherMain(Datum main_arg)
{
	LauncherSlot *locals;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* Connect to no database: pg_database is a shared catalog. */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("task_fdw launcher");

	locals = MemoryContextAllocZero(TopMemoryContext,
									sizeof(LauncherSlot) * TaskFdwState->nslots);

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	TaskFdwState->launcher_pid = MyProcPid;
	TaskFdwState->launcher_procno = tfdw_my_procno();
	LWLockRelease(TaskFdwState->lock);
	before_shmem_exit(launcher_detach, (Datum) 0);

	ereport(LOG, (errmsg("task_fdw launcher started")));
	want_all_databases();

	for (;;)
	{
		long		timeout;

		timeout = start_wanted_dispatchers(locals);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, TFDW_WAIT_EVENT_LAUNCHER);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
