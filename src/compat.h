/*-------------------------------------------------------------------------
 *
 * compat.h
 *		  The one place where task_fdw tests PG_VERSION_NUM.
 *
 * Every difference between PostgreSQL major versions that task_fdw meets is
 * hidden behind a macro or inline function here, so porting to a newer major
 * means editing this file only.  The code base targets PostgreSQL 15.
 *
 * IDENTIFICATION
 *		  src/compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef TASK_FDW_COMPAT_H
#define TASK_FDW_COMPAT_H

#include "catalog/pg_foreign_server.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "optimizer/inherit.h"
#include "optimizer/pathnode.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/wait_event.h"

#if PG_VERSION_NUM < 150000
#error "task_fdw requires PostgreSQL 15 or later"
#endif

/* This process's PGPROC index, as other processes' SetLatch needs it. */
#if PG_VERSION_NUM >= 170000
#define tfdw_my_procno() MyProcNumber
#else
#define tfdw_my_procno() (MyProc->pgprocno)
#endif

/* This backend's local id of its current transaction. */
#if PG_VERSION_NUM >= 170000
#define tfdw_local_xid() (MyProc->vxid.lxid)
#else
#define tfdw_local_xid() (MyProc->lxid)
#endif

/*
 * Wait events.  PostgreSQL 17 lets an extension name its own: the
 * dispatcher's event loop (TaskFdwDispatcher), the launcher's
 * (TaskFdwLauncher) and a session in task_fdw.wait() (TaskFdwWait).  15 and
 * 16 have only PG_WAIT_EXTENSION, which pg_stat_activity shows as
 * wait_event_type and wait_event "Extension" for all three.
 */
#if PG_VERSION_NUM >= 170000
#define TFDW_DEFINE_WAIT_EVENT(fn, name) \
static inline uint32 \
fn(void) \
{ \
	static uint32 id = 0; \
	if (id == 0) \
		id = WaitEventExtensionNew(name); \
	return id; \
}
TFDW_DEFINE_WAIT_EVENT(tfdw_wait_event_main, "TaskFdwDispatcher")
TFDW_DEFINE_WAIT_EVENT(tfdw_wait_event_launcher, "TaskFdwLauncher")
TFDW_DEFINE_WAIT_EVENT(tfdw_wait_event_task, "TaskFdwWait")
#define TFDW_WAIT_EVENT_MAIN		tfdw_wait_event_main()
#define TFDW_WAIT_EVENT_LAUNCHER	tfdw_wait_event_launcher()
#define TFDW_WAIT_EVENT_TASK		tfdw_wait_event_task()
#else
#define TFDW_WAIT_EVENT_MAIN		PG_WAIT_EXTENSION
#define TFDW_WAIT_EVENT_LAUNCHER	PG_WAIT_EXTENSION
#define TFDW_WAIT_EVENT_TASK		PG_WAIT_EXTENSION
#endif

/* CreateWaitEventSet takes a ResourceOwner from PostgreSQL 17 on. */
#if PG_VERSION_NUM >= 170000
#define tfdw_create_wait_event_set(nevents) CreateWaitEventSet(NULL, (nevents))
#else
#define tfdw_create_wait_event_set(nevents) \
	CreateWaitEventSet(TopMemoryContext, (nevents))
#endif

/* ExecInsertIndexTuples gained onlySummarizing in PostgreSQL 16. */
#if PG_VERSION_NUM >= 160000
#define tfdw_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define tfdw_insert_index_tuples(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

/*
 * Settings the dispatcher overrides that only some versions have (see
 * dispatcher_settings): transaction_timeout appeared in PostgreSQL 17.
 */
#if PG_VERSION_NUM >= 170000
#define TFDW_VERSION_SETTINGS {"transaction_timeout", "0"},
#else
#define TFDW_VERSION_SETTINGS
#endif

/*
 * table_tuple_update, without waiting for a row lock, as of now: its
 * update_indexes became a TU_UpdateIndexes in PostgreSQL 16.  The task
 * store has no summarizing (BRIN) indexes, so an update either needs new
 * entries in all its indexes or in none (HOT).
 */
static inline TM_Result
tfdw_tuple_update(Relation rel, ItemPointer otid, TupleTableSlot *slot,
				  Snapshot snapshot, TM_FailureData *tmfd, bool *new_index_entries)
{
	LockTupleMode lockmode;
#if PG_VERSION_NUM >= 160000
	TU_UpdateIndexes update_indexes;
#else
	bool		update_indexes;
#endif
	TM_Result	result = table_tuple_update(rel, otid, slot, GetCurrentCommandId(true),
											snapshot, InvalidSnapshot, false, tmfd,
											&lockmode, &update_indexes);

#if PG_VERSION_NUM >= 160000
	*new_index_entries = (update_indexes != TU_None);
#else
	*new_index_entries = update_indexes;
#endif
	return result;
}

/* create_foreignscan_path grew disabled_nodes (18) and fdw_restrictinfo (17). */
#if PG_VERSION_NUM >= 180000
#define tfdw_create_foreignscan_path(root, rel, rows, startup, total, priv) \
	create_foreignscan_path((root), (rel), NULL, (rows), 0, (startup), (total), \
							NIL, NULL, NULL, NIL, (priv))
#elif PG_VERSION_NUM >= 170000
#define tfdw_create_foreignscan_path(root, rel, rows, startup, total, priv) \
	create_foreignscan_path((root), (rel), NULL, (rows), (startup), (total), \
							NIL, NULL, NULL, NIL, (priv))
#else
#define tfdw_create_foreignscan_path(root, rel, rows, startup, total, priv) \
	create_foreignscan_path((root), (rel), NULL, (rows), (startup), (total), \
							NIL, NULL, NULL, (priv))
#endif

/*
 * The user whose privileges apply to a modified foreign table: PostgreSQL 16
 * has ExecGetResultRelCheckAsUser; 15 keeps checkAsUser in the range table.
 */
#if PG_VERSION_NUM >= 160000
#define tfdw_result_rel_user(rri, estate) ExecGetResultRelCheckAsUser((rri), (estate))
#else
static inline Oid
tfdw_result_rel_user(ResultRelInfo *rri, EState *estate)
{
	RangeTblEntry *rte = exec_rt_fetch(rri->ri_RangeTableIndex, estate);

	return OidIsValid(rte->checkAsUser) ? rte->checkAsUser : GetUserId();
}
#endif

/* Columns named in INSERT's target list. */
#if PG_VERSION_NUM >= 160000
#define tfdw_inserted_cols(root, rte) \
	(getRTEPermissionInfo((root)->parse->rteperminfos, (rte))->insertedCols)
#else
#define tfdw_inserted_cols(root, rte) ((rte)->insertedCols)
#endif

/*
 * Columns UPDATE sets in result relation rti, also when it is an inheritance
 * child, whose RTE has no permission info of its own from 16 on: core's
 * get_rel_all_updated_cols, from 15.2 on.
 */
#if PG_VERSION_NUM >= 150002
#define tfdw_updated_cols(root, rti) \
	get_rel_all_updated_cols((root), find_base_rel((root), (rti)))
#else
#define tfdw_updated_cols(root, rti) (planner_rt_fetch((rti), (root))->updatedCols)
#endif

/* A role's USAGE privilege on a foreign server: object_aclcheck from 16 on. */
#if PG_VERSION_NUM >= 160000
#define tfdw_server_aclcheck(serverid, roleid) \
	object_aclcheck(ForeignServerRelationId, (serverid), (roleid), ACL_USAGE)
#else
#define tfdw_server_aclcheck(serverid, roleid) \
	pg_foreign_server_aclcheck((serverid), (roleid), ACL_USAGE)
#endif

#endif							/* TASK_FDW_COMPAT_H */
