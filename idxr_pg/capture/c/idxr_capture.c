/*
 * idxr_capture: the capture trigger of idxr-pg as a C function, the default capture path where
 * the server has the library (idxr_pg/capture/library.py builds and installs it with PGXS;
 * `idxr-pg triggers install` creates the trusted extension in schema idxr as the schema's
 * owner and points the triggers of a target at idxr.idxr_capture() with the target's
 * arguments). Targets it does not cover keep the plpgsql functions of
 * idxr_pg/capture/triggers.py, whose queue rules this file follows.
 *
 * One statement-level AFTER trigger function for INSERT / UPDATE / DELETE / TRUNCATE, the same
 * shape and the same queue rules as the plpgsql functions idxr_pg/capture/triggers.py writes
 * (revision 0007: share-locked pending rows, queue_pending not unique):
 *
 *   - the statement's entity keys come from its transition tables (key columns named in the
 *     trigger arguments); an UPDATE queues a key only if its key or a column the kind reads
 *     changed, comparing the datums (old and new rows are paired in the order PostgreSQL
 *     captured them; a key change queues the old and the new key);
 *   - more than BATCH_THRESHOLD keys (repeats dropped where keys are not unique), or a
 *     REPEATABLE READ / SERIALIZABLE transaction: ONE idxr.queue_batches row with all of them;
 *   - else, per distinct key in byte order: one pending idxr.queue row of the key (index
 *     queue_pending) is share-locked as SELECT ... FOR SHARE would in READ COMMITTED, and a
 *     pending row is inserted if none could be;
 *   - TRUNCATE: every entity of the kind that is indexed or leased (one SPI query);
 *   - the wake-up: pg_notify('idxr_queue', kind) if a row was inserted and
 *     pg_try_advisory_xact_lock(WAKE_NAMESPACE, hashtext(kind)) succeeds.
 *
 * What it saves over plpgsql: the interpreter, SECURITY DEFINER's user switch and GUCs, and
 * the SPI executor start-up of the queue statements: the pending-row look-up is a direct index
 * probe (its plan cannot degrade), the insert a heap insert plus index insertions. Parsed
 * trigger arguments and the queue's relations (with their IndexInfos) are cached for the
 * backend's life and dropped by relcache invalidations; the per-statement keys live in the
 * trigger's per-call memory, so an error leaves nothing behind.
 *
 * Trigger arguments: kind, source table (as configured), flags ('n': ring the wake-up,
 * 'u': the keys are unique in the table), then one (key column, read columns) pair per
 * reader; read columns comma-separated, '' meaning the whole row. Key expressions are not
 * supported.
 *
 * The function writes the queue whatever the caller's rights (no permission checks apply to
 * direct heap and index calls; the TRUNCATE query runs as the queue's owner), so EXECUTE on it
 * must stay with the installer: whoever can create a trigger with it chooses its arguments.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_coerce.h"
#include "rewrite/rewriteHandler.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "optimizer/optimizer.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

#define BATCH_THRESHOLD 8	   /* idxr_pg.capture.triggers.BATCH_THRESHOLD */
#define WAKE_NAMESPACE 0x69647877	/* idxr_pg.db.advisory.WAKE_NAMESPACE */
#define QUEUE_CHANNEL "idxr_queue"	/* idxr_pg.db.queue.CHANNEL */

typedef struct KeyText
{
	CoercionPathType path;
	FmgrInfo	fn;				/* cast function, or the type's output function */
	int			nargs;
} KeyText;

typedef struct Reader
{
	AttrNumber	key;
	KeyText		text;
	int			ncols;			/* 0: the whole row */
	AttrNumber *cols;
} Reader;

typedef struct Capture
{
	const char *kind;
	const char *source;
	bool		notify;
	bool		unique;
	int			nreaders;
	Reader	   *readers;
} Capture;

typedef struct Keys
{
	int			n;
	int			size;
	char	  **v;
} Keys;

PG_FUNCTION_INFO_V1(idxr_capture);
void		_PG_init(void);
static void relcache_changed(Datum arg, Oid relid);

void
_PG_init(void)
{
	CacheRegisterRelcacheCallback(relcache_changed, (Datum) 0);
}

static void
key_text_init(KeyText *kt, Oid typid)
{
	Oid			funcid = InvalidOid;
	Oid			base = getBaseType(typid);

	kt->path = find_coercion_pathway(TEXTOID, base, COERCION_EXPLICIT, &funcid);
	if (kt->path == COERCION_PATH_FUNC && OidIsValid(funcid))
	{
		fmgr_info_cxt(funcid, &kt->fn, CurrentMemoryContext);
		kt->nargs = get_func_nargs(funcid);
	}
	else if (kt->path == COERCION_PATH_RELABELTYPE)
		kt->nargs = 0;
	else
	{
		Oid			out;
		bool		varlena;

		getTypeOutputInfo(base, &out, &varlena);
		fmgr_info_cxt(out, &kt->fn, CurrentMemoryContext);
		kt->path = COERCION_PATH_COERCEVIAIO;
		kt->nargs = 1;
	}
}

/* (value)::text, as the plpgsql functions compute a key. */
static char *
key_text(KeyText *kt, Datum value)
{
	if (kt->path == COERCION_PATH_RELABELTYPE)
		return TextDatumGetCString(value);
	if (kt->path == COERCION_PATH_COERCEVIAIO)
		return OutputFunctionCall(&kt->fn, value);
	if (kt->nargs >= 3)
		return TextDatumGetCString(FunctionCall3(&kt->fn, value, Int32GetDatum(-1),
												 BoolGetDatum(true)));
	if (kt->nargs == 2)
		return TextDatumGetCString(FunctionCall2(&kt->fn, value, Int32GetDatum(-1)));
	return TextDatumGetCString(FunctionCall1(&kt->fn, value));
}

static AttrNumber
column_number(Relation rel, const char *name, const char *kind)
{
	AttrNumber	attno = get_attnum(RelationGetRelid(rel), name);

	if (attno <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("idxr capture for entity kind \"%s\": column \"%s\" of %s does not exist",
						kind, name, RelationGetRelationName(rel)),
				 errhint("Run idxr-pg triggers install again.")));
	return attno;
}

static Capture *
parse_arguments(TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	Relation	rel = td->tg_relation;
	Capture    *c = palloc0(sizeof(Capture));
	int			i;

	if (tg->tgnargs < 5 || (tg->tgnargs - 3) % 2 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("idxr_capture: trigger \"%s\" on %s has malformed arguments",
						tg->tgname, RelationGetRelationName(rel))));
	c->kind = pstrdup(tg->tgargs[0]);
	c->source = pstrdup(tg->tgargs[1]);
	c->notify = strchr(tg->tgargs[2], 'n') != NULL;
	c->unique = strchr(tg->tgargs[2], 'u') != NULL;
	c->nreaders = (tg->tgnargs - 3) / 2;
	c->readers = palloc0(sizeof(Reader) * c->nreaders);
	for (i = 0; i < c->nreaders; i++)
	{
		Reader	   *r = &c->readers[i];
		char	   *cols = tg->tgargs[3 + 2 * i + 1];

		r->key = column_number(rel, tg->tgargs[3 + 2 * i], c->kind);
		key_text_init(&r->text, TupleDescAttr(RelationGetDescr(rel), r->key - 1)->atttypid);
		if (cols[0] != '\0')
		{
			char	   *copy = pstrdup(cols);
			char	   *save = NULL;
			char	   *tok;
			int			n = 1;

			for (tok = cols; *tok; tok++)
				n += (*tok == ',');
			r->cols = palloc(sizeof(AttrNumber) * n);
			for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
				r->cols[r->ncols++] = column_number(rel, tok, c->kind);
		}
	}
	return c;
}


/*
 * Parsed trigger arguments, cached per trigger for the backend's life. A change of the
 * trigger or of its table (CREATE OR REPLACE TRIGGER, ALTER TABLE) invalidates the table's
 * relcache entry, which marks the trigger's entry stale (`relcache_changed`); a stale entry
 * is freed and rebuilt at the start of the next call, never while a call uses it.
 */
typedef struct CaptureEntry
{
	Oid			tgoid;			/* hash key */
	Oid			relid;
	bool		valid;
	MemoryContext cxt;
	Capture    *capture;
} CaptureEntry;

static HTAB *captures = NULL;

static Capture *
capture_for(TriggerData *td)
{
	Oid			tgoid = td->tg_trigger->tgoid;
	CaptureEntry *entry;
	bool		found;
	MemoryContext cxt,
				caller;
	Capture    *c;

	if (captures == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureEntry);
		ctl.hcxt = CacheMemoryContext;
		captures = hash_create("idxr_capture triggers", 16, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = hash_search(captures, &tgoid, HASH_FIND, NULL);
	if (entry != NULL && entry->valid)
		return entry->capture;
	{
		HASH_SEQ_STATUS seq;
		CaptureEntry *stale;

		hash_seq_init(&seq, captures);
		while ((stale = hash_seq_search(&seq)) != NULL)
			if (!stale->valid)
			{
				MemoryContextDelete(stale->cxt);
				hash_search(captures, &stale->tgoid, HASH_REMOVE, NULL);
			}
	}
	/* Built under the caller's context first: an error leaves nothing in the cache. */
	cxt = AllocSetContextCreate(CurrentMemoryContext, "idxr_capture trigger",
								ALLOCSET_SMALL_SIZES);
	caller = MemoryContextSwitchTo(cxt);
	c = parse_arguments(td);
	MemoryContextSwitchTo(caller);
	MemoryContextSetParent(cxt, CacheMemoryContext);
	entry = hash_search(captures, &tgoid, HASH_ENTER, &found);
	entry->relid = RelationGetRelid(td->tg_relation);
	entry->valid = true;
	entry->cxt = cxt;
	entry->capture = c;
	return c;
}

static void
keys_add(Keys *keys, char *key)
{
	if (keys->n == keys->size)
	{
		keys->size = keys->size ? keys->size * 2 : 16;
		keys->v = keys->v ? repalloc(keys->v, sizeof(char *) * keys->size)
			: palloc(sizeof(char *) * keys->size);
	}
	keys->v[keys->n++] = key;
}

static int
key_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* Sort in byte order (COLLATE "C") and drop repeats. */
static void
keys_distinct(Keys *keys)
{
	int			i,
				n = 0;

	if (keys->n < 2)
		return;
	qsort(keys->v, keys->n, sizeof(char *), key_cmp);
	for (i = 0; i < keys->n; i++)
		if (n == 0 || strcmp(keys->v[n - 1], keys->v[i]) != 0)
			keys->v[n++] = keys->v[i];
	keys->n = n;
}

static void
add_row_keys(Capture *c, TupleTableSlot *slot, Keys *keys)
{
	int			i;

	for (i = 0; i < c->nreaders; i++)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, c->readers[i].key, &isnull);

		if (!isnull)
			keys_add(keys, key_text(&c->readers[i].text, value));
	}
}

static bool
same_value(TupleTableSlot *a, TupleTableSlot *b, AttrNumber attno)
{
	Form_pg_attribute att = TupleDescAttr(a->tts_tupleDescriptor, attno - 1);
	bool		anull,
				bnull;
	Datum		av = slot_getattr(a, attno, &anull);
	Datum		bv = slot_getattr(b, attno, &bnull);

	if (anull || bnull)
		return anull == bnull;
	return datum_image_eq(av, bv, att->attbyval, att->attlen);
}

/* Did an UPDATE change what reader r sees (its key, or a column it reads)? */
static bool
reader_changed(Reader *r, TupleTableSlot *old, TupleTableSlot *new)
{
	int			i;

	if (!same_value(old, new, r->key))
		return true;
	if (r->ncols == 0)
	{
		int			natts = old->tts_tupleDescriptor->natts;

		for (i = 1; i <= natts; i++)
			if (!TupleDescAttr(old->tts_tupleDescriptor, i - 1)->attisdropped &&
				!same_value(old, new, i))
				return true;
		return false;
	}
	for (i = 0; i < r->ncols; i++)
		if (!same_value(old, new, r->cols[i]))
			return true;
	return false;
}

static TupleTableSlot *
reader_slot(Tuplestorestate *store, TupleDesc desc, int *ptr)
{
	*ptr = tuplestore_alloc_read_pointer(store, 0);
	tuplestore_select_read_pointer(store, *ptr);
	tuplestore_rescan(store);
	return MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
}

static bool
next_row(Tuplestorestate *store, int ptr, TupleTableSlot *slot)
{
	tuplestore_select_read_pointer(store, ptr);
	return tuplestore_gettupleslot(store, true, false, slot);
}

static void
collect_rows(Capture *c, Tuplestorestate *store, TupleDesc desc, Keys *keys)
{
	int			ptr;
	TupleTableSlot *slot = reader_slot(store, desc, &ptr);

	while (next_row(store, ptr, slot))
		add_row_keys(c, slot, keys);
	ExecDropSingleTupleTableSlot(slot);
}

static void
collect_changed(Capture *c, TriggerData *td, Keys *keys)
{
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	int			optr,
				nptr;
	TupleTableSlot *old,
			   *new;

	if (tuplestore_tuple_count(td->tg_oldtable) != tuplestore_tuple_count(td->tg_newtable))
	{
		/* Not paired one to one (cannot happen for a plain UPDATE): every key is changed. */
		collect_rows(c, td->tg_oldtable, desc, keys);
		collect_rows(c, td->tg_newtable, desc, keys);
		return;
	}
	old = reader_slot(td->tg_oldtable, desc, &optr);
	new = reader_slot(td->tg_newtable, desc, &nptr);
	while (next_row(td->tg_oldtable, optr, old) && next_row(td->tg_newtable, nptr, new))
	{
		int			i;

		for (i = 0; i < c->nreaders; i++)
		{
			Reader	   *r = &c->readers[i];
			bool		onull,
						nnull;
			Datum		ov,
						nv;

			if (!reader_changed(r, old, new))
				continue;
			ov = slot_getattr(old, r->key, &onull);
			nv = slot_getattr(new, r->key, &nnull);
			if (!onull)
				keys_add(keys, key_text(&r->text, ov));
			if (!nnull && !(onull == false && same_value(old, new, r->key)))
				keys_add(keys, key_text(&r->text, nv));
		}
	}
	ExecDropSingleTupleTableSlot(old);
	ExecDropSingleTupleTableSlot(new);
}

/*
 * TRUNCATE has no transition table: every entity of the kind that is indexed or leased. The
 * query runs as the owner of idxr.queue (the application's role has no rights on idxr).
 */
static void
collect_truncated(Capture *c, Oid owner, Keys *keys)
{
	static const char *query =
		"SELECT entity_id FROM idxr.search_index WHERE entity_kind = $1"
		" UNION SELECT entity_id FROM idxr.leases WHERE entity_kind = $1";
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1] = {CStringGetTextDatum(c->kind)};
	MemoryContext caller = CurrentMemoryContext;
	Oid			saved_user;
	int			saved_context;
	uint64		i;

	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(owner, saved_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	SPI_connect();
	if (SPI_execute_with_args(query, 1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "idxr_capture: reading the entities of kind \"%s\" failed", c->kind);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *key = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		if (key)
		{
			MemoryContext spi = MemoryContextSwitchTo(caller);	/* SPI_finish frees SPI's */

			keys_add(keys, pstrdup(key));
			MemoryContextSwitchTo(spi);
		}
	}
	SPI_finish();
	SetUserIdAndSecContext(saved_user, saved_context);
}

/* ------------------------------------------------------------------------------------------
 * The queue tables, written with direct heap and index calls.
 */

/*
 * What the function knows of idxr.queue and idxr.queue_batches, cached for the backend's
 * life: relation, identity sequence and index oids, each index's IndexInfo with its partial
 * predicate compiled once (a per-statement ExecOpenIndices would copy and plan it again).
 * Any relcache invalidation of these relations (or a full reset) marks it stale; it is
 * rebuilt under the table's lock, so it matches the relation as the executor would see it.
 */
typedef struct QueueTable
{
	Oid			relid;
	Oid			sequence;		/* of the identity column */
	int			nindexes;
	Oid		   *indexes;
	IndexInfo **infos;
} QueueTable;

typedef struct QueueCache
{
	bool		valid;
	MemoryContext cxt;
	QueueTable	queue;
	QueueTable	batches;
	int			pending;		/* position of queue_pending in queue.indexes */
	AttrNumber	claimed_by;
	AttrNumber	attempts;
} QueueCache;

static QueueCache qcache = {0};

static bool
cached_relation(QueueTable *t, Oid relid)
{
	int			i;

	if (t->relid == relid)
		return true;
	for (i = 0; i < t->nindexes; i++)
		if (t->indexes[i] == relid)
			return true;
	return false;
}

static void
relcache_changed(Datum arg, Oid relid)
{
	if (captures != NULL)
	{
		HASH_SEQ_STATUS seq;
		CaptureEntry *entry;

		hash_seq_init(&seq, captures);
		while ((entry = hash_seq_search(&seq)) != NULL)
			if (relid == InvalidOid || entry->relid == relid)
				entry->valid = false;
	}
	if (qcache.valid && (relid == InvalidOid || cached_relation(&qcache.queue, relid) ||
						 cached_relation(&qcache.batches, relid)))
		qcache.valid = false;
}

static Oid
idxr_relation(const char *name)
{
	Oid			ns = get_namespace_oid("idxr", true);
	Oid			relid = OidIsValid(ns) ? get_relname_relid(name, ns) : InvalidOid;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("idxr_capture: idxr.%s does not exist", name),
				 errhint("Run idxr-pg migrate.")));
	return relid;
}

static void
queue_table_build(QueueTable *t, Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	AttrNumber	id = get_attnum(RelationGetRelid(rel), "id");
	ListCell   *lc;

	t->relid = RelationGetRelid(rel);
	if (id <= 0 || !TupleDescAttr(RelationGetDescr(rel), id - 1)->attidentity)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idxr_capture: %s has no identity column \"id\"",
						RelationGetRelationName(rel)),
				 errhint("Run idxr-pg migrate.")));
	t->sequence = getIdentitySequence(t->relid, id, false);
	t->nindexes = list_length(indexes);
	t->indexes = palloc(sizeof(Oid) * t->nindexes);
	t->infos = palloc(sizeof(IndexInfo *) * t->nindexes);
	t->nindexes = 0;
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		if (info->ii_Predicate != NIL)
			info->ii_PredicateState =
				ExecInitQual((List *) expression_planner((Expr *) info->ii_Predicate), NULL);
		t->indexes[t->nindexes] = lfirst_oid(lc);
		t->infos[t->nindexes++] = info;
		index_close(index, NoLock);
	}
}

/* Called with idxr.queue locked: (re)build the cache if an invalidation marked it stale. */
static void
queue_cache_check(void)
{
	MemoryContext caller;
	Oid			pending;
	Relation	queue,
				batches;
	int			i;

	if (qcache.valid)
		return;
	if (qcache.cxt == NULL)
		qcache.cxt = AllocSetContextCreate(CacheMemoryContext, "idxr_capture queue",
										   ALLOCSET_SMALL_SIZES);
	MemoryContextReset(qcache.cxt);
	memset(&qcache.queue, 0, sizeof(QueueTable));
	memset(&qcache.batches, 0, sizeof(QueueTable));
	caller = MemoryContextSwitchTo(qcache.cxt);
	queue = table_open(idxr_relation("queue"), RowExclusiveLock);
	batches = table_open(idxr_relation("queue_batches"), RowExclusiveLock);
	queue_table_build(&qcache.queue, queue);
	queue_table_build(&qcache.batches, batches);
	pending = idxr_relation("queue_pending");
	qcache.pending = -1;
	for (i = 0; i < qcache.queue.nindexes; i++)
		if (qcache.queue.indexes[i] == pending)
			qcache.pending = i;
	qcache.claimed_by = get_attnum(qcache.queue.relid, "claimed_by");
	qcache.attempts = get_attnum(qcache.queue.relid, "attempts");
	if (qcache.pending < 0 || qcache.claimed_by <= 0 || qcache.attempts <= 0 ||
		qcache.queue.infos[qcache.pending]->ii_NumIndexKeyAttrs != 2 ||
		qcache.queue.infos[qcache.pending]->ii_IndexAttrNumbers[0] !=
		get_attnum(qcache.queue.relid, "entity_kind") ||
		qcache.queue.infos[qcache.pending]->ii_IndexAttrNumbers[1] !=
		get_attnum(qcache.queue.relid, "entity_id"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idxr_capture: idxr.queue is not the shape this library knows "
						"(index queue_pending on (entity_kind, entity_id), columns "
						"claimed_by and attempts)"),
				 errhint("Run idxr-pg migrate, or rebuild idxr_capture with "
						 "idxr-pg doctor --install-missing.")));
	/*
	 * A unique queue_pending (before revision 0007) would make the second of two writers that
	 * insert an entity's first pending row at once fail with a unique violation.
	 */
	if (qcache.queue.infos[qcache.pending]->ii_Unique)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("idxr_capture: idxr.queue_pending is unique; this trigger needs the "
						"share-locked pending rows of revision 0007"),
				 errhint("Run idxr-pg migrate.")));
	table_close(batches, NoLock);
	table_close(queue, NoLock);
	MemoryContextSwitchTo(caller);
	qcache.valid = true;
}

typedef struct Target
{
	QueueTable *table;
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
} Target;

static void
target_open(Target *t, bool batches)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	int			i;

	/* Lock the queue first (its cache is checked under that lock), as every call does. */
	t->rel = table_open(qcache.valid ? qcache.queue.relid : idxr_relation("queue"),
						RowExclusiveLock);
	queue_cache_check();
	if (batches)
	{
		table_close(t->rel, NoLock);
		t->rel = table_open(qcache.batches.relid, RowExclusiveLock);
	}
	t->table = batches ? &qcache.batches : &qcache.queue;
	t->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = t->table->relid;
	rte->relkind = t->rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(t->estate, list_make1(rte));
	t->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(t->rri, t->rel, 1, NULL, 0);
	t->estate->es_output_cid = GetCurrentCommandId(true);
	t->rri->ri_NumIndices = t->table->nindexes;
	t->rri->ri_IndexRelationDescs = palloc(sizeof(Relation) * t->table->nindexes);
	t->rri->ri_IndexRelationInfo = t->table->infos;
	for (i = 0; i < t->table->nindexes; i++)
		t->rri->ri_IndexRelationDescs[i] = index_open(t->table->indexes[i], RowExclusiveLock);
	t->slot = MakeSingleTupleTableSlot(RelationGetDescr(t->rel), &TTSOpsVirtual);
}

static void
target_close(Target *t)
{
	int			i;

	ExecDropSingleTupleTableSlot(t->slot);
	ExecCloseIndices(t->rri);
	for (i = 0; i < t->table->nindexes; i++)
		t->table->infos[i]->ii_ExpressionsState = NIL;	/* lived in the estate */
	FreeExecutorState(t->estate);
	table_close(t->rel, NoLock);
}

/*
 * Insert one row: the named text/array values, the identity from its sequence, now() for
 * the queue's timestamp defaults (enqueued_at, not_before), 0 for attempts, any other
 * default evaluated, the rest NULL.
 */
static void
target_insert(Target *t, int n, const char **names, Datum *values)
{
	TupleDesc	desc = RelationGetDescr(t->rel);
	TupleTableSlot *slot = t->slot;
	int			i,
				j;

	ExecClearTuple(slot);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);

		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
		if (att->attisdropped)
			continue;
		for (j = 0; j < n; j++)
			if (strcmp(names[j], name) == 0)
				break;
		if (j < n)
		{
			slot->tts_values[i] = values[j];
			slot->tts_isnull[i] = false;
		}
		else if (att->attidentity)
		{
			slot->tts_values[i] = Int64GetDatum(nextval_internal(t->table->sequence, false));
			slot->tts_isnull[i] = false;
		}
		else if (att->atthasdef && att->atttypid == INT4OID && strcmp(name, "attempts") == 0)
		{
			slot->tts_values[i] = Int32GetDatum(0);
			slot->tts_isnull[i] = false;
		}
		else if (att->atthasdef && att->atttypid == TIMESTAMPTZOID &&
				 (strcmp(name, "enqueued_at") == 0 || strcmp(name, "not_before") == 0))
		{
			slot->tts_values[i] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
			slot->tts_isnull[i] = false;
		}
		else if (att->atthasdef)
		{
			Node	   *expr = build_column_default(t->rel, att->attnum);
			ExprState  *state = ExecPrepareExpr((Expr *) expr, t->estate);
			ExprContext *econtext = GetPerTupleExprContext(t->estate);
			bool		isnull;

			slot->tts_values[i] = ExecEvalExprSwitchContext(state, econtext, &isnull);
			slot->tts_isnull[i] = isnull;
		}
	}
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(t->rri, t->estate, slot);
}

static const char *
operation_name(TriggerEvent event)
{
	if (TRIGGER_FIRED_BY_INSERT(event))
		return "INSERT";
	if (TRIGGER_FIRED_BY_UPDATE(event))
		return "UPDATE";
	if (TRIGGER_FIRED_BY_DELETE(event))
		return "DELETE";
	return "TRUNCATE";
}

static void
queue_batch(Capture *c, Keys *keys, const char *operation)
{
	Target		t;
	Datum	   *elems = palloc(sizeof(Datum) * keys->n);
	const char *names[4] = {"entity_kind", "entity_ids", "source_table", "operation"};
	Datum		values[4];
	int			i;

	for (i = 0; i < keys->n; i++)
		elems[i] = CStringGetTextDatum(keys->v[i]);
	values[0] = CStringGetTextDatum(c->kind);
	values[1] = PointerGetDatum(construct_array(elems, keys->n, TEXTOID, -1, false,
												TYPALIGN_INT));
	values[2] = CStringGetTextDatum(c->source);
	values[3] = CStringGetTextDatum(operation);
	target_open(&t, true);
	target_insert(&t, 4, names, values);
	target_close(&t);
}

typedef struct Pending
{
	Relation	index;
	TupleTableSlot *found;
	TupleTableSlot *locked;
} Pending;

static void
pending_open(Pending *p, Target *t)
{
	p->index = t->rri->ri_IndexRelationDescs[qcache.pending];
	p->found = table_slot_create(t->rel, NULL);
	p->locked = table_slot_create(t->rel, NULL);
}

static void
pending_close(Pending *p)
{
	ExecDropSingleTupleTableSlot(p->found);
	ExecDropSingleTupleTableSlot(p->locked);
}

static bool
still_pending(TupleTableSlot *slot)
{
	bool		isnull;
	Datum		attempts;

	(void) slot_getattr(slot, qcache.claimed_by, &isnull);
	if (!isnull)
		return false;
	attempts = slot_getattr(slot, qcache.attempts, &isnull);
	return !isnull && DatumGetInt32(attempts) == 0;
}

/*
 * Share-lock a pending row of (kind, key), as SELECT ... FOR SHARE does in READ COMMITTED:
 * a row updated meanwhile is followed to its newest version, which must still be pending.
 */
static bool
lock_pending(Pending *p, Target *t, Snapshot snapshot, Datum kind, Datum key)
{
	ScanKeyData sk[2];
	IndexScanDesc scan;
	bool		locked = false;

	ScanKeyEntryInitialize(&sk[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   p->index->rd_indcollation[0], F_TEXTEQ, kind);
	ScanKeyEntryInitialize(&sk[1], 0, 2, BTEqualStrategyNumber, InvalidOid,
						   p->index->rd_indcollation[1], F_TEXTEQ, key);
	scan = index_beginscan(t->rel, p->index, snapshot, 2, 0);
	index_rescan(scan, sk, 2, NULL, 0);
	while (!locked && index_getnext_slot(scan, ForwardScanDirection, p->found))
	{
		TM_FailureData tmfd;
		TM_Result	result;

		result = table_tuple_lock(t->rel, &p->found->tts_tid, snapshot, p->locked,
								  GetCurrentCommandId(false), LockTupleShare, LockWaitBlock,
								  TUPLE_LOCK_FLAG_FIND_LAST_VERSION, &tmfd);
		locked = result == TM_Ok && still_pending(p->locked);
	}
	index_endscan(scan);
	return locked;
}

/* Per key (distinct, byte order): lock its pending row or insert one. True if inserted any. */
static bool
queue_keys(Capture *c, Keys *keys, const char *operation)
{
	Target		t;
	Pending		p;
	Snapshot	snapshot;
	const char *names[4] = {"entity_kind", "entity_id", "source_table", "operation"};
	Datum		values[4];
	bool		inserted = false;
	int			i;

	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	snapshot = GetActiveSnapshot();
	target_open(&t, false);
	pending_open(&p, &t);
	values[0] = CStringGetTextDatum(c->kind);
	values[2] = CStringGetTextDatum(c->source);
	values[3] = CStringGetTextDatum(operation);
	for (i = 0; i < keys->n; i++)
	{
		values[1] = CStringGetTextDatum(keys->v[i]);
		if (lock_pending(&p, &t, snapshot, values[0], values[1]))
			continue;
		target_insert(&t, 4, names, values);
		inserted = true;
	}
	pending_close(&p);
	target_close(&t);
	PopActiveSnapshot();
	return inserted;
}

static void
wake(Capture *c)
{
	Datum		hash = DirectFunctionCall1Coll(hashtext, DEFAULT_COLLATION_OID,
											   CStringGetTextDatum(c->kind));

	if (DatumGetBool(DirectFunctionCall2(pg_try_advisory_xact_lock_int4,
										 Int32GetDatum(WAKE_NAMESPACE), hash)))
		Async_Notify(QUEUE_CHANNEL, c->kind);
}

/*
 * Run only as the function in schema idxr, beside the queue it writes. The function writes the
 * queue with no permission check, and EXECUTE on it is what keeps other roles from choosing
 * what it queues: a copy created elsewhere (another schema, with other grants) must be useless.
 */
static void
refuse_outside_idxr(FunctionCallInfo fcinfo)
{
	Oid			ns = get_func_namespace(fcinfo->flinfo->fn_oid);
	Oid			queue_ns = get_rel_namespace(idxr_relation("queue"));

	if (ns != queue_ns)
	{
		char	   *where = get_namespace_name(ns);

		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("idxr_capture: function %s.%s runs only in schema idxr, the schema of "
						"idxr.queue",
						where ? where : "?", get_func_name(fcinfo->flinfo->fn_oid)),
				 errhint("Let idxr-pg triggers install create the extension idxr_capture.")));
	}
}

Datum
idxr_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TriggerEvent event;
	Capture    *c;
	Keys		keys = {0};
	TupleDesc	desc;
	bool		enqueued;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idxr_capture: not called by the trigger manager")));
	event = td->tg_event;
	if (!TRIGGER_FIRED_AFTER(event) || !TRIGGER_FIRED_FOR_STATEMENT(event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("idxr_capture: trigger \"%s\" must be AFTER ... FOR EACH STATEMENT",
						td->tg_trigger->tgname)));
	refuse_outside_idxr(fcinfo);
	c = capture_for(td);
	desc = RelationGetDescr(td->tg_relation);
	if (TRIGGER_FIRED_BY_TRUNCATE(event))
	{
		Oid			queue = idxr_relation("queue");
		HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(queue));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "idxr_capture: cache lookup failed for idxr.queue");
		collect_truncated(c, ((Form_pg_class) GETSTRUCT(tup))->relowner, &keys);
		ReleaseSysCache(tup);
	}
	else
	{
		bool		insert = TRIGGER_FIRED_BY_INSERT(event);
		bool		update = TRIGGER_FIRED_BY_UPDATE(event);

		if ((insert || update) && td->tg_newtable == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("idxr_capture: trigger \"%s\" needs REFERENCING NEW TABLE",
							td->tg_trigger->tgname)));
		if (!insert && td->tg_oldtable == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("idxr_capture: trigger \"%s\" needs REFERENCING OLD TABLE",
							td->tg_trigger->tgname)));
		if (insert)
			collect_rows(c, td->tg_newtable, desc, &keys);
		else if (update)
			collect_changed(c, td, &keys);
		else
			collect_rows(c, td->tg_oldtable, desc, &keys);
	}
	if (keys.n > BATCH_THRESHOLD && !c->unique)
		keys_distinct(&keys);	/* few entities, many rows: stay on the coalescing path */
	if (keys.n == 0)
		return PointerGetDatum(NULL);
	if (keys.n > BATCH_THRESHOLD || IsolationUsesXactSnapshot())
	{
		queue_batch(c, &keys, operation_name(event));
		enqueued = true;
	}
	else
	{
		keys_distinct(&keys);
		enqueued = queue_keys(c, &keys, operation_name(event));
	}
	if (enqueued && c->notify)
		wake(c);
	return PointerGetDatum(NULL);
}
