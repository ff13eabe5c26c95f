/*-------------------------------------------------------------------------
 *
 * option.c
 *		  Options of task_fdw servers, user mappings and foreign tables: the
 *		  validator, and the typed views the rest of the code reads.
 *
 * The valid options are declared once, in TaskFdwOptions: the libpq
 * connection options (taken from PQconndefaults, minus the ones task_fdw
 * sets itself or that would be unsafe) and task_fdw's own options.  The
 * validator and every reader go through that table.
 *
 * IDENTIFICATION
 *		  src/option.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/reloptions.h"
#include "catalog/pg_foreign_data_wrapper.h"
#include "catalog/pg_foreign_server.h"
#include "catalog/pg_foreign_table.h"
#include "catalog/pg_user_mapping.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "fmgr.h"
#include "libpq-fe.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#ifdef HAVE_LIBPQSRV_PROXY_CHECK
#include "libpq/libpq-be-fe-helpers.h"
#endif

#include "task_fdw.h"

/* One valid option: where it may appear, and whether libpq takes it. */
typedef struct TaskFdwOption
{
	const char *keyword;
	Oid			optcontext;		/* catalog OID of the object it applies to */
	bool		is_libpq_opt;
} TaskFdwOption;

/* task_fdw's own options; the libpq ones are appended at first use. */
static const TaskFdwOption own_options[] = {
	{"pool_size", ForeignServerRelationId, false},
	{"connect_retry_timeout", ForeignServerRelationId, false},
	{"reset_session", ForeignServerRelationId, false},
	{"pipeline_depth", ForeignServerRelationId, false},
	/* Defaults of task attributes: a foreign table's beat its server's. */
	{"priority", ForeignServerRelationId, false},
	{"priority", ForeignTableRelationId, false},
	{"timeout", ForeignServerRelationId, false},
	{"timeout", ForeignTableRelationId, false},
	{"max_attempts", ForeignServerRelationId, false},
	{"max_attempts", ForeignTableRelationId, false},
	{"retry_sqlstates", ForeignServerRelationId, false},
	{"retry_sqlstates", ForeignTableRelationId, false},
	{"retry_delay", ForeignServerRelationId, false},
	{"retry_delay", ForeignTableRelationId, false},
	{"batch", ForeignServerRelationId, false},
	{"batch", ForeignTableRelationId, false},
	{"on_interrupt", ForeignServerRelationId, false},
	{"on_interrupt", ForeignTableRelationId, false},
	/* Only a superuser may let a role connect without using a password. */
	{"password_required", UserMappingRelationId, false},
	{NULL, InvalidOid, false}
};

/*
 * libpq options that name files on the database server, or the secret of
 * one: only superusers may set them, on servers or user mappings, as
 * otherwise a role could make the server use its own files on its behalf.
 */
static const char *const superuser_only_options[] = {
	"sslcert", "sslkey", "sslpassword", "sslrootcert", "sslcrl", "sslcrldir",
	"passfile", "service", NULL
};

/* libpq options that task_fdw sets itself for every connection. */
static const char *const overridden_libpq_options[] = {
	"application_name", "fallback_application_name", "client_encoding", NULL
};

/* The full table, built once per process. */
static TaskFdwOption *TaskFdwOptions = NULL;

PG_FUNCTION_INFO_V1(task_fdw_validator);

static void init_task_fdw_options(void);
static const TaskFdwOption *find_option(const char *keyword, Oid context);
static void report_invalid_option(const char *keyword, Oid context);
static int	parse_int_option(DefElem *def, int min, int max);
static int64 parse_interval_option(DefElem *def, bool zero_ok, Interval **result);
static List *parse_sqlstates_option(DefElem *def);
static void apply_task_option(DefElem *def, TaskDefaults *defaults);
static bool apply_server_option(DefElem *def, TaskServerOptions *opts);
static const char *local_socket_host(void);

/*
 * init_task_fdw_options builds TaskFdwOptions from our own options and the
 * libpq options that are safe to pass through.
 */
static void
init_task_fdw_options(void)
{
	PQconninfoOption *libpq_options;
	PQconninfoOption *lopt;
	TaskFdwOption *opt;
	int			n = 0;

	if (TaskFdwOptions)
		return;

	libpq_options = PQconndefaults();
	if (libpq_options == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Could not get libpq's default connection options.")));

	for (lopt = libpq_options; lopt->keyword; lopt++)
		n++;
	n += lengthof(own_options) + 2;	/* sslcert and sslkey go twice */

	TaskFdwOptions = MemoryContextAllocZero(TopMemoryContext,
											sizeof(TaskFdwOption) * n);
	opt = TaskFdwOptions;
	for (lopt = libpq_options; lopt->keyword; lopt++)
	{
		const char *const *skip;
		bool		skipped = false;

		/* Debug options (such as "replication") are never allowed. */
		if (strchr(lopt->dispchar, 'D'))
			continue;
		for (skip = overridden_libpq_options; *skip; skip++)
			if (strcmp(*skip, lopt->keyword) == 0)
				skipped = true;
#ifdef HAVE_LIBPQSRV_PROXY_CHECK
		if (!libpqsrv_is_valid_proxy_option(lopt->keyword))
			skipped = true;
#endif
		if (skipped)
			continue;

		opt->keyword = MemoryContextStrdup(TopMemoryContext, lopt->keyword);
		/* The user name and secrets belong in user mappings, the rest in servers. */
		if (strcmp(lopt->keyword, "user") == 0 || strchr(lopt->dispchar, '*'))
			opt->optcontext = UserMappingRelationId;
		else
			opt->optcontext = ForeignServerRelationId;
		opt->is_libpq_opt = true;
		opt++;
		/* A client certificate may be per server or per user, as in postgres_fdw. */
		if (strcmp(lopt->keyword, "sslcert") == 0 || strcmp(lopt->keyword, "sslkey") == 0)
		{
			opt->keyword = opt[-1].keyword;
			opt->optcontext = UserMappingRelationId;
			opt->is_libpq_opt = true;
			opt++;
		}
	}
	memcpy(opt, own_options, sizeof(own_options));
	PQconninfoFree(libpq_options);
}

/*
 * find_option returns the table entry for keyword in context, or NULL.
 */
static const TaskFdwOption *
find_option(const char *keyword, Oid context)
{
	const TaskFdwOption *opt;

	init_task_fdw_options();
	for (opt = TaskFdwOptions; opt->keyword; opt++)
		if (opt->optcontext == context && strcmp(opt->keyword, keyword) == 0)
			return opt;
	return NULL;
}

/*
 * report_invalid_option raises the error for an option that is not valid in
 * context, listing the valid ones.
 */
static void
report_invalid_option(const char *keyword, Oid context)
{
	const TaskFdwOption *opt;
	StringInfoData buf;

	initStringInfo(&buf);
	for (opt = TaskFdwOptions; opt->keyword; opt++)
	{
		if (opt->optcontext != context)
			continue;
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? ", " : "", opt->keyword);
	}
	ereport(ERROR,
			(errcode(ERRCODE_FDW_INVALID_OPTION_NAME),
			 errmsg("invalid option \"%s\"", keyword),
			 buf.len > 0
			 ? errhint("Valid options in this context are: %s", buf.data)
			 : errhint("There are no valid options in this context.")));
}

/*
 * parse_int_option returns the integer value of def, raising an error that
 * names the option when it is not an integer in [min, max].
 */
static int
parse_int_option(DefElem *def, int min, int max)
{
	char	   *value = defGetString(def);
	char	   *end;
	long		result;

	/* Strictly an integer: no fraction, unit or trailing text. */
	errno = 0;
	result = strtol(value, &end, 10);
	if (end == value || *end != '\0' || errno != 0 || result < min || result > max)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
				 errmsg("invalid value for option \"%s\": \"%s\"", def->defname, value),
				 errhint("The value must be an integer between %d and %d.", min, max)));
	return (int) result;
}

/*
 * TaskFdwIntervalUsecs returns the length of interval in microseconds,
 * counting a month as 30 days, and capped at TFDW_MAX_INTERVAL_USECS (some
 * 36,000 years) so that adding it to a timestamp cannot overflow.
 */
int64
TaskFdwIntervalUsecs(const Interval *interval)
{
	int64		days = (int64) interval->month * DAYS_PER_MONTH + interval->day;
	int64		usecs;

	if (days > TFDW_MAX_INTERVAL_USECS / USECS_PER_DAY)
		return TFDW_MAX_INTERVAL_USECS;
	if (days < -TFDW_MAX_INTERVAL_USECS / USECS_PER_DAY)
		return -TFDW_MAX_INTERVAL_USECS;
	usecs = days * USECS_PER_DAY + interval->time;
	return Max(Min(usecs, TFDW_MAX_INTERVAL_USECS), -TFDW_MAX_INTERVAL_USECS);
}

/*
 * parse_interval_option returns the length in microseconds of the interval
 * value of def, and the interval itself in *result, raising an error that
 * names the option when it is not a positive interval (or zero, if zero_ok).
 */
static int64
parse_interval_option(DefElem *def, bool zero_ok, Interval **result)
{
	char	   *value = defGetString(def);
	MemoryContext cxt = CurrentMemoryContext;
	Interval   *interval = NULL;
	int64		usecs = -1;

	PG_TRY();
	{
		interval = DatumGetIntervalP(DirectFunctionCall3(interval_in,
														 CStringGetDatum(value),
														 ObjectIdGetDatum(InvalidOid),
														 Int32GetDatum(-1)));
		usecs = TaskFdwIntervalUsecs(interval);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();

	if (interval == NULL || usecs < 0 || (usecs == 0 && !zero_ok))
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
				 errmsg("invalid value for option \"%s\": \"%s\"", def->defname, value),
				 errhint("The value must be a %s interval, such as '30s' or '5 minutes'.",
						 zero_ok ? "non-negative" : "positive")));
	*result = interval;
	return usecs;
}

/*
 * parse_sqlstates_option returns the SQLSTATE codes listed, comma-separated,
 * in def's value, raising an error that names the option for a malformed one.
 */
static List *
parse_sqlstates_option(DefElem *def)
{
	char	   *value = defGetString(def);
	char	   *copy = pstrdup(value);
	List	   *codes = NIL;
	char	   *token;
	char	   *save;

	for (token = strtok_r(copy, ",", &save); token; token = strtok_r(NULL, ",", &save))
	{
		char	   *code = token + strspn(token, " \t\n");
		int			len = strcspn(code, " \t\n");

		if (len != 5 || strspn(code, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") < 5 ||
			code[5 + strspn(code + 5, " \t\n")] != '\0')
			ereport(ERROR,
					(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
					 errmsg("invalid value for option \"%s\": \"%s\"", def->defname, value),
					 errhint("The value must be a comma-separated list of five-character SQLSTATE codes, such as '40001, 55P03'.")));
		code[5] = '\0';
		codes = lappend(codes, code);
	}
	return codes;
}

/*
 * apply_task_option sets the task attribute default that def gives in
 * defaults, validating it; options that are not task defaults are ignored.
 */
static void
apply_task_option(DefElem *def, TaskDefaults *defaults)
{
	if (strcmp(def->defname, "priority") == 0)
		defaults->priority = parse_int_option(def, INT_MIN, INT_MAX);
	else if (strcmp(def->defname, "timeout") == 0)
		(void) parse_interval_option(def, false, &defaults->timeout);
	else if (strcmp(def->defname, "max_attempts") == 0)
		defaults->max_attempts = parse_int_option(def, 1, 10000);
	else if (strcmp(def->defname, "retry_sqlstates") == 0)
		defaults->retry_sqlstates = parse_sqlstates_option(def);
	else if (strcmp(def->defname, "retry_delay") == 0)
		(void) parse_interval_option(def, true, &defaults->retry_delay);
	else if (strcmp(def->defname, "batch") == 0)
		defaults->batch = defGetString(def);
	else if (strcmp(def->defname, "on_interrupt") == 0)
	{
		char	   *value = defGetString(def);

		if (strcmp(value, "fail") != 0 && strcmp(value, "retry") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
					 errmsg("invalid value for option \"%s\": \"%s\"", def->defname, value),
					 errhint("Valid values are \"fail\" and \"retry\".")));
		defaults->retry_interrupted = strcmp(value, "retry") == 0;
	}
}

/*
 * TaskFdwGetTaskDefaults fills defaults with the attribute defaults of tasks
 * submitted through foreign table table of server: the table's options
 * override the server's, which override the built-in defaults.
 */
void
TaskFdwGetTaskDefaults(ForeignTable *table, ForeignServer *server,
					   TaskDefaults *defaults)
{
	ListCell   *lc;

	memset(defaults, 0, sizeof(TaskDefaults));
	defaults->max_attempts = 1;
	foreach(lc, server->options)
		apply_task_option((DefElem *) lfirst(lc), defaults);
	foreach(lc, table->options)
		apply_task_option((DefElem *) lfirst(lc), defaults);
}

/*
 * task_fdw_validator
 *		Validate the options given to a task_fdw object: wrapper, server,
 *		user mapping or foreign table.
 */
Datum
task_fdw_validator(PG_FUNCTION_ARGS)
{
	List	   *options = untransformRelOptions(PG_GETARG_DATUM(0));
	Oid			catalog = PG_GETARG_OID(1);
	ListCell   *cell;

	foreach(cell, options)
	{
		DefElem    *def = (DefElem *) lfirst(cell);

		const char *const *su;

		if (find_option(def->defname, catalog) == NULL)
			report_invalid_option(def->defname, catalog);

		for (su = superuser_only_options; *su; su++)
			if (strcmp(*su, def->defname) == 0 && !superuser())
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("only superusers may set option \"%s\"", def->defname),
						 errdetail("The option names a file, or the secret of one, that the database server itself would read.")));

		if (strcmp(def->defname, "password_required") == 0)
		{
			if (!defGetBoolean(def) && !superuser())
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("only superusers may set option \"password_required\" to false"),
						 errhint("User mappings that let a role connect without a password may only be created or changed by a superuser.")));
		}
		else if (strcmp(def->defname, "port") == 0)
			(void) parse_int_option(def, 1, 65535);
		else
		{
			TaskServerOptions server_scratch;
			TaskDefaults scratch;

			if (!apply_server_option(def, &server_scratch))
				apply_task_option(def, &scratch);
		}
	}

	PG_RETURN_VOID();
}

/*
 * TaskFdwGetServerOptions fills opts with the task_fdw options of server,
 * defaults first.
 */
void
TaskFdwGetServerOptions(ForeignServer *server, TaskServerOptions *opts)
{
	ListCell   *lc;

	opts->pool_size = 4;
	opts->connect_timeout = 0;
	opts->connect_retry_timeout = 5 * 60 * USECS_PER_SEC;
	opts->reset_session = true;
	opts->pipeline_depth = 32;
	foreach(lc, server->options)
		(void) apply_server_option((DefElem *) lfirst(lc), opts);
}

/*
 * apply_server_option sets the server setting that def gives in opts, and
 * returns whether def is one: the validator and TaskFdwGetServerOptions
 * both read the options through it, so that each is checked one way.
 */
static bool
apply_server_option(DefElem *def, TaskServerOptions *opts)
{
	Interval   *unused;

	if (strcmp(def->defname, "pool_size") == 0)
		opts->pool_size = parse_int_option(def, 1, 10000);
	else if (strcmp(def->defname, "connect_timeout") == 0)
		opts->connect_timeout = parse_int_option(def, 0, INT_MAX);
	else if (strcmp(def->defname, "connect_retry_timeout") == 0)
		opts->connect_retry_timeout = parse_interval_option(def, true, &unused);
	else if (strcmp(def->defname, "reset_session") == 0)
		opts->reset_session = defGetBoolean(def);
	else if (strcmp(def->defname, "pipeline_depth") == 0)
		opts->pipeline_depth = parse_int_option(def, 0, 1000);
	else
		return false;
	return true;
}

/*
 * TaskFdwPasswordRequired returns whether tasks through user mapping user
 * must authenticate with its password: when the role it is for is not a
 * superuser (now), unless a superuser set password_required 'false' on it.
 */
bool
TaskFdwPasswordRequired(UserMapping *user)
{
	ListCell   *lc;

	if (superuser_arg(user->userid))
		return false;
	foreach(lc, user->options)
	{
		DefElem    *def = (DefElem *) lfirst(lc);

		if (strcmp(def->defname, "password_required") == 0)
			return defGetBoolean(def);
	}
	return true;
}

/*
 * TaskFdwPasswordProblem returns NULL when user mapping user, for server,
 * has the password it needs; otherwise the error message, with its detail
 * and hint in *detail and *hint.
 */
const char *
TaskFdwPasswordProblem(ForeignServer *server, UserMapping *user,
					   const char **detail, const char **hint)
{
	ListCell   *lc;

	if (!TaskFdwPasswordRequired(user))
		return NULL;
	foreach(lc, user->options)
	{
		DefElem    *def = (DefElem *) lfirst(lc);

		if (strcmp(def->defname, "password") == 0 && defGetString(def)[0] != '\0')
			return NULL;
	}
	*detail = "Tasks of roles that are not superusers must authenticate with the password of their user mapping.";
	*hint = "Add the option password to the user mapping, or have a superuser set password_required 'false' on it.";
	return psprintf("user mapping for role \"%s\" on server \"%s\" has no password",
					MappingUserName(user->userid), server->servername);
}

/*
 * TaskFdwCheckPassword raises an error when user mapping user, for server,
 * must provide a password and has none.
 */
void
TaskFdwCheckPassword(ForeignServer *server, UserMapping *user)
{
	const char *detail;
	const char *hint;
	const char *problem = TaskFdwPasswordProblem(server, user, &detail, &hint);

	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_S_R_E_PROHIBITED_SQL_STATEMENT_ATTEMPTED),
				 errmsg_internal("%s", problem),
				 errdetail_internal("%s", detail),
				 errhint("%s", hint)));
}

/*
 * local_socket_host returns the host to reach this cluster: its first Unix
 * socket directory, or localhost when it has none.
 */
static const char *
local_socket_host(void)
{
	char	   *rawstring;
	List	   *dirs;

	if (Unix_socket_directories == NULL || Unix_socket_directories[0] == '\0')
		return "localhost";
	rawstring = pstrdup(Unix_socket_directories);
	if (!SplitDirectoriesString(rawstring, ',', &dirs) || dirs == NIL)
		return "localhost";
	return (const char *) linitial(dirs);
}

/*
 * TaskFdwBuildConnParams builds the NULL-terminated libpq keyword and value
 * arrays for connecting to server as user, with appname as application_name,
 * and returns how many pairs it set.
 *
 * A server without host and hostaddr is the loopback: this cluster, through
 * its Unix socket and port; without dbname as well, it is this database.
 */
int
TaskFdwBuildConnParams(ForeignServer *server, UserMapping *user,
					   const char *appname,
					   const char ***keywords, const char ***values)
{
	List	   *all = list_concat_copy(server->options, user->options);
	const char **kw;
	const char **val;
	bool		has_host = false;
	bool		has_port = false;
	bool		has_dbname = false;
	bool		has_user = false;
	int			n = 0;
	ListCell   *lc;
	char	   *port;

	kw = palloc0(sizeof(char *) * (list_length(all) + 7));
	val = palloc0(sizeof(char *) * (list_length(all) + 7));

	foreach(lc, all)
	{
		DefElem    *def = (DefElem *) lfirst(lc);
		const TaskFdwOption *opt;

		opt = find_option(def->defname, ForeignServerRelationId);
		if (opt == NULL)
			opt = find_option(def->defname, UserMappingRelationId);
		if (opt == NULL || !opt->is_libpq_opt)
			continue;
		if (strcmp(def->defname, "host") == 0 || strcmp(def->defname, "hostaddr") == 0)
			has_host = true;
		else if (strcmp(def->defname, "port") == 0)
			has_port = true;
		else if (strcmp(def->defname, "dbname") == 0)
			has_dbname = true;
		else if (strcmp(def->defname, "user") == 0)
			has_user = true;
		kw[n] = def->defname;
		val[n] = defGetString(def);
		n++;
	}

	if (!has_host)
	{
		kw[n] = "host";
		val[n] = local_socket_host();
		n++;
		if (!has_port)
		{
			port = psprintf("%d", PostPortNumber);
			kw[n] = "port";
			val[n] = port;
			n++;
		}
		if (!has_dbname)
		{
			kw[n] = "dbname";
			val[n] = get_database_name(MyDatabaseId);
			n++;
		}
	}
	/* The remote user defaults to the submitting role's name. */
	if (!has_user && OidIsValid(user->userid))
	{
		kw[n] = "user";
		val[n] = GetUserNameFromId(user->userid, false);
		n++;
	}
	kw[n] = "application_name";
	val[n] = appname;
	n++;
	kw[n] = "client_encoding";
	val[n] = GetDatabaseEncodingName();
	n++;
	kw[n] = NULL;
	val[n] = NULL;

	*keywords = kw;
	*values = val;
	return n;
}
