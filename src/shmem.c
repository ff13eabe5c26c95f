/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		  The shared registry of dispatchers, and waking a dispatcher when a
 *		  transaction that submitted tasks commits.
 *
 * Each database that has tasks gets a slot.  A submitting backend makes sure
 * its database has a slot while it can still raise errors (at INSERT), and
 * at commit only sets flags and latches: it sets work_pending and wakes the
 * running dispatcher, or marks the slot wanted and wakes the launcher, which
 * starts one.  A dispatcher exits when idle only if no commit set
 * work_pending in the meantime, under the same lock, so no wake-up is lost.
 * Each slot also holds the status of its dispatcher's pools, under a lock
 * of its own (stats.c publishes and reads it).
 *
 * IDENTIFICATION
 *		  src/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "task_fdw.h"
#include "compat.h"

TaskFdwShared *TaskFdwState = NULL;

/* What this transaction did to tasks (TFDW_XACT_*): acted on at its end. */
static int	xact_did = 0;

/*
 * The pools this transaction submitted tasks to, for the dispatcher; or
 * xact_pools_unknown when that is not all there is to look at (too many
 * pools, a task scheduled for later, task rows changed or locked).
 */
static TaskFdwPoolKey xact_pools[TFDW_MAX_HINTS];
static int	xact_npools = 0;
static bool xact_pools_unknown = false;

static Size task_fdw_shmem_size(void);
static void note_work(int what);
static void forget_pools(void);
static void wake_dispatcher(bool work, bool cancel);

/*
 * task_fdw_shmem_size returns the size of the shared state: one slot per
 * possible background worker.
 */
static Size
task_fdw_shmem_size(void)
{
	return add_size(offsetof(TaskFdwShared, slots),
					mul_size(sizeof(DispatcherSlot), max_worker_processes));
}

/*
 * TaskFdwShmemRequest asks for the shared memory and lock task_fdw needs.
 */
void
TaskFdwShmemRequest(void)
{
	RequestAddinShmemSpace(task_fdw_shmem_size());
	RequestNamedLWLockTranche("task_fdw", 1);
	RequestNamedLWLockTranche("task_fdw stats", max_worker_processes);
}

/*
 * TaskFdwShmemStartup attaches to (creating if needed) the shared state.
 */
void
TaskFdwShmemStartup(void)
{
	bool		found;
	int			i;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	TaskFdwState = ShmemInitStruct("task_fdw", task_fdw_shmem_size(), &found);
	if (!found)
	{
		LWLockPadded *stats_locks = GetNamedLWLockTranche("task_fdw stats");

		TaskFdwState->lock = &(GetNamedLWLockTranche("task_fdw"))->lock;
		TaskFdwState->launcher_pid = 0;
		TaskFdwState->launcher_procno = -1;
		ConditionVariableInit(&TaskFdwState->task_finished);
		pg_atomic_init_u32(&TaskFdwState->connections, 0);
		TaskFdwState->nslots = max_worker_processes;
		for (i = 0; i < TaskFdwState->nslots; i++)
		{
			DispatcherSlot *slot = &TaskFdwState->slots[i];

			memset(slot, 0, sizeof(DispatcherSlot));
			slot->procno = -1;
			slot->stats_lock = &stats_locks[i].lock;
			pg_atomic_init_u32(&slot->work_pending, 0);
			pg_atomic_init_u32(&slot->cancel_pending, 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * TaskFdwFindSlot returns dboid's slot, or NULL.  The caller holds
 * TaskFdwState->lock.
 */
DispatcherSlot *
TaskFdwFindSlot(Oid dboid)
{
	int			i;

	for (i = 0; i < TaskFdwState->nslots; i++)
		if (TaskFdwState->slots[i].dboid == dboid)
			return &TaskFdwState->slots[i];
	return NULL;
}

/*
 * TaskFdwSetProcLatch sets the latch of the process with PGPROC index procno.
 */
void
TaskFdwSetProcLatch(int procno)
{
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/*
 * TaskFdwRequestDispatcher makes sure this database has a dispatcher slot
 * and notes what the transaction did to tasks (TFDW_XACT_* flags), so that
 * the dispatcher and waiters are told when it ends.  The caller does not
 * say which pools that concerns, so the dispatcher will look at the whole
 * queue; submitting a task, whose pool is known, goes through
 * TaskFdwNoteSubmission instead.
 *
 * Called while submitting or changing tasks, where an error is still
 * allowed, so that commit itself has nothing left that could fail.
 */
void
TaskFdwRequestDispatcher(int what)
{
	note_work(what);
	if (what & (TFDW_XACT_SUBMITTED | TFDW_XACT_LOCKED))
		xact_pools_unknown = true;
}

/*
 * note_work is TaskFdwRequestDispatcher without saying where the work is.
 */
static void
note_work(int what)
{
	DispatcherSlot *slot;

	TaskFdwCheckPreloaded();
	if ((xact_did & what) == what)
		return;

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	slot = TaskFdwFindSlot(MyDatabaseId);
	if (slot == NULL)
		slot = TaskFdwFindSlot(InvalidOid);
	if (slot == NULL)
	{
		LWLockRelease(TaskFdwState->lock);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many databases use task_fdw"),
				 errdetail("Each database with tasks needs a dispatcher, and there are at most %d.",
						   TaskFdwState->nslots),
				 errhint("Increase max_worker_processes.")));
	}
	slot->dboid = MyDatabaseId;
	LWLockRelease(TaskFdwState->lock);

	xact_did |= what;
}

/*
 * TaskFdwNoteSubmission notes that this transaction submitted a task to
 * pool (serverid, userid), scheduled for later or not: the dispatcher will
 * look at that pool's queue when the transaction commits.
 */
void
TaskFdwNoteSubmission(Oid serverid, Oid userid, bool scheduled)
{
	int			i;

	note_work(TFDW_XACT_SUBMITTED);
	if (scheduled)
		xact_pools_unknown = true;
	if (xact_pools_unknown)
		return;
	for (i = 0; i < xact_npools; i++)
		if (xact_pools[i].serverid == serverid && xact_pools[i].userid == userid)
			return;
	if (xact_npools == TFDW_MAX_HINTS)
	{
		xact_pools_unknown = true;
		return;
	}
	xact_pools[xact_npools].serverid = serverid;
	xact_pools[xact_npools].userid = userid;
	xact_npools++;
}

/*
 * forget_pools forgets the pools the ending transaction submitted tasks to.
 */
static void
forget_pools(void)
{
	xact_npools = 0;
	xact_pools_unknown = false;
}

/*
 * slot_add_hints tells slot's dispatcher where this transaction's work is.
 * The caller holds the lock.
 */
static void
slot_add_hints(DispatcherSlot *slot)
{
	int			i;
	int			j;

	if (xact_pools_unknown || xact_npools == 0)
		slot->hints_unknown = true;
	for (i = 0; i < xact_npools && !slot->hints_unknown; i++)
	{
		for (j = 0; j < slot->nhints; j++)
			if (slot->hints[j].serverid == xact_pools[i].serverid &&
				slot->hints[j].userid == xact_pools[i].userid)
				break;
		if (j < slot->nhints)
			continue;
		if (slot->nhints == TFDW_MAX_HINTS)
			slot->hints_unknown = true;
		else
			slot->hints[slot->nhints++] = xact_pools[i];
	}
}

/*
 * TaskFdwSlotTakeHints moves the pools that committed transactions submitted
 * tasks to since the last call into hints (room for TFDW_MAX_HINTS), and
 * returns how many; or -1 if the whole queue must be searched.  Called by
 * the dispatcher after it has cleared work_pending.
 */
int
TaskFdwSlotTakeHints(DispatcherSlot *slot, TaskFdwPoolKey *hints)
{
	int			n;

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	n = slot->hints_unknown ? -1 : slot->nhints;
	if (n > 0)
		memcpy(hints, slot->hints, n * sizeof(TaskFdwPoolKey));
	slot->hints_unknown = false;
	slot->nhints = 0;
	LWLockRelease(TaskFdwState->lock);
	return n;
}

/*
 * wake_dispatcher tells this database's dispatcher that there is work
 * (queued tasks, or task rows no longer locked) and/or running tasks to
 * cancel, starting one through the launcher if none runs.
 */
static void
wake_dispatcher(bool work, bool cancel)
{
	DispatcherSlot *slot;

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	slot = TaskFdwFindSlot(MyDatabaseId);
	if (slot != NULL)
	{
		if (work)
		{
			slot_add_hints(slot);
			pg_atomic_write_u32(&slot->work_pending, 1);
		}
		if (cancel)
			pg_atomic_write_u32(&slot->cancel_pending, 1);
		if (slot->pid != 0)
			TaskFdwSetProcLatch(slot->procno);
		else if (work)
		{
			slot->wanted = true;
			TaskFdwSetProcLatch(TaskFdwState->launcher_procno);
		}
	}
	LWLockRelease(TaskFdwState->lock);
}

/*
 * TaskFdwXactCallback refuses PREPARE of a transaction that submitted or
 * changed tasks, and tells the dispatcher and waiters what it did when it
 * ends.
 */
void
TaskFdwXactCallback(XactEvent event, void *arg)
{
	int			did = xact_did;

	if (did == 0)
		return;

	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that has submitted or changed task_fdw tasks"),
					 errhint("Commit the transaction instead; tasks start and stop only after a commit.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			xact_did = 0;
			wake_dispatcher((did & (TFDW_XACT_SUBMITTED | TFDW_XACT_LOCKED)) != 0,
							(did & TFDW_XACT_CANCELLED) != 0);
			forget_pools();
			if (did & TFDW_XACT_FINISHED)
				TaskFdwWakeWaiters();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			xact_did = 0;
			/* Rows it locked may be claimed or recorded now: look everywhere. */
			if (did & TFDW_XACT_LOCKED)
				wake_dispatcher(true, false);
			forget_pools();
			break;
		default:
			break;
	}
}

/*
 * TaskFdwStopDispatcher asks the dispatcher of database dboid, if any, to
 * exit, and keeps the launcher from starting it again until a task is
 * submitted there: DROP DATABASE and renaming need the database to have no
 * other sessions.
 */
void
TaskFdwStopDispatcher(Oid dboid)
{
	DispatcherSlot *slot;
	pid_t		pid = 0;

	if (!OidIsValid(dboid) || TaskFdwState == NULL)
		return;
	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	slot = TaskFdwFindSlot(dboid);
	if (slot != NULL)
	{
		slot->wanted = false;
		pid = slot->pid;
	}
	LWLockRelease(TaskFdwState->lock);
	if (pid != 0)
		(void) kill(pid, SIGTERM);
}

/*
 * TaskFdwSlotAttach claims dboid's slot for the calling dispatcher and
 * returns it, or returns NULL when another dispatcher already runs there.
 */
DispatcherSlot *
TaskFdwSlotAttach(Oid dboid)
{
	DispatcherSlot *slot;

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	slot = TaskFdwFindSlot(dboid);
	if (slot == NULL)
		slot = TaskFdwFindSlot(InvalidOid);
	if (slot == NULL || (slot->pid != 0 && slot->pid != MyProcPid))
	{
		LWLockRelease(TaskFdwState->lock);
		return NULL;
	}
	slot->dboid = dboid;
	slot->pid = MyProcPid;
	slot->procno = tfdw_my_procno();
	slot->wanted = true;
	slot->clean_exit = false;
	LWLockRelease(TaskFdwState->lock);
	return slot;
}

/*
 * TaskFdwSlotIdleExit gives up the slot and returns true, unless a submitter
 * committed since the dispatcher last looked, in which case it returns false
 * and the dispatcher goes on.
 */
bool
TaskFdwSlotIdleExit(DispatcherSlot *slot)
{
	bool		exiting = false;

	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&slot->work_pending) == 0)
	{
		slot->pid = 0;
		slot->procno = -1;
		slot->wanted = false;
		slot->clean_exit = true;
		exiting = true;
	}
	LWLockRelease(TaskFdwState->lock);
	return exiting;
}

/*
 * TaskFdwSlotDetach releases the slot of an exiting dispatcher.  With forget,
 * the database needs no dispatcher (it has no task_fdw); otherwise the slot
 * stays wanted and the launcher starts a new dispatcher.
 */
void
TaskFdwSlotDetach(DispatcherSlot *slot, bool forget)
{
	LWLockAcquire(TaskFdwState->lock, LW_EXCLUSIVE);
	if (slot->pid == MyProcPid)
	{
		slot->pid = 0;
		slot->procno = -1;
		slot->clean_exit = forget;
		if (forget && pg_atomic_read_u32(&slot->work_pending) == 0)
		{
			slot->wanted = false;
			slot->dboid = InvalidOid;
		}
		if (slot->wanted)
			TaskFdwSetProcLatch(TaskFdwState->launcher_procno);
	}
	LWLockRelease(TaskFdwState->lock);
}
