/* batch.c: offline batch mode (see tern-coord.h): JSON lines in, JSON lines
 * out, through the same scheduler and pipeline as gRPC requests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern-api.h"
#include "tern-coord.h"
#include "tern-json.h"

typedef struct job {
	char id[128];
	char *text;          /* generated text, grown as pieces arrive */
	size_t text_len, text_cap;
	uint32_t *ids;       /* generated token ids */
	size_t n_ids, cap_ids;
	int finish_reason;
	uint32_t prompt_tokens, completion_tokens;
	int score;
	double prompt_nll;
	uint32_t scored_tokens;
	int status;
	char error[512];
	int done;
} job;

static void append_text(job *j, const char *t, size_t n)
{
	if (!n)
		return;
	if (j->text_len + n + 1 > j->text_cap) {
		size_t cap = (j->text_cap + n + 1) * 2;
		char *nt = realloc(j->text, cap);
		if (!nt)
			return;
		j->text = nt;
		j->text_cap = cap;
	}
	memcpy(j->text + j->text_len, t, n);
	j->text_len += n;
	j->text[j->text_len] = '\0';
}

static void on_piece(void *ctx, const Tern__V1__GenerateResponse *m)
{
	job *j = ctx;
	if (j->n_ids == j->cap_ids) {
		size_t cap = j->cap_ids ? j->cap_ids * 2 : 64;
		uint32_t *ni = realloc(j->ids, cap * sizeof *ni);
		if (!ni)
			return;
		j->ids = ni;
		j->cap_ids = cap;
	}
	j->ids[j->n_ids++] = m->token_id;
	append_text(j, m->text, strlen(m->text));
}

static void on_done(void *ctx, const Tern__V1__GenerateResponse *fin, int status, const char *details)
{
	job *j = ctx;
	j->status = status;
	if (fin) {
		append_text(j, fin->text, strlen(fin->text));
		j->finish_reason = fin->finish_reason;
		j->prompt_nll = fin->prompt_nll;
		j->scored_tokens = fin->scored_tokens;
		if (fin->usage) {
			j->prompt_tokens = fin->usage->prompt_tokens;
			j->completion_tokens = fin->usage->completion_tokens;
		}
	}
	if (status != TERN_STATUS_OK)
		snprintf(j->error, sizeof j->error, "%s", details ? details : "failed");
	j->done = 1;
}

/* The array member key of o in *arr (NULL when absent, and nothing else set);
 * when present, *items (the address of a pointer) gets a new zeroed array of
 * its length (at least one element of elem bytes) and *n the length. */
static int get_array(const tern_json *o, const char *key, size_t elem, void *items, size_t *n, const tern_json **arr,
		     const char *path, int line, tern_err *err)
{
	const tern_json *a = *arr = tern_json_get(o, key);
	if (!a)
		return 0;
	TERN_RETURN_IF(a->type != TERN_JSON_ARRAY, err, TERN_EFORMAT, "%s:%d: %s is not an array", path, line, key);
	void *p = calloc(a->len ? a->len : 1, elem);
	TERN_RETURN_IF(!p, err, TERN_ENOMEM, "out of memory");
	memcpy(items, &p, sizeof p);
	*n = a->len;
	return 0;
}

/* Fills a GenerateRequest from one JSON object; strings point into the doc,
 * arrays are malloc'd (freed by free_request). */
static int build_request(const tern_json *o, Tern__V1__GenerateRequest *r, Tern__V1__SamplingParams *sp,
			 const char *path, int line, tern_err *err)
{
	TERN_RETURN_IF(!o || o->type != TERN_JSON_OBJECT, err, TERN_EFORMAT, "%s:%d: not a JSON object", path, line);
	r->prompt = (char *)tern_json_get_str(o, "prompt", "");
	r->max_tokens = (uint32_t)tern_json_get_int(o, "max_tokens", 0);
	TERN_RETURN_IF(tern_json_get_int(o, "max_tokens", 0) < 0, err, TERN_EFORMAT, "%s:%d: negative max_tokens",
		       path, line);
	r->ignore_eos = tern_json_get_bool(o, "ignore_eos", 0);
	r->score_prompt = tern_json_get_bool(o, "score", 0);
	r->request_id = (char *)tern_json_get_str(o, "id", "");
	sp->temperature = (float)tern_json_get_num(o, "temperature", 0);
	const int64_t top_k = tern_json_get_int(o, "top_k", 0);
	TERN_RETURN_IF(top_k < 0, err, TERN_EFORMAT, "%s:%d: negative top_k", path, line);
	sp->top_k = (uint32_t)top_k;
	sp->top_p = (float)tern_json_get_num(o, "top_p", 0);
	sp->min_p = (float)tern_json_get_num(o, "min_p", 0);
	sp->repetition_penalty = (float)tern_json_get_num(o, "repetition_penalty", 0);
	const tern_json *seed = tern_json_get(o, "seed");
	if (seed && seed->type == TERN_JSON_NUMBER) {
		sp->has_seed = 1;
		sp->seed = (uint64_t)seed->integer;
	}
	r->sampling = sp;
	const tern_json *ids, *stop, *msgs;
	TERN_FORWARD_IF_ERROR(
	    get_array(o, "token_ids", sizeof *r->token_ids, &r->token_ids, &r->n_token_ids, &ids, path, line, err));
	for (size_t i = 0; ids && i < ids->len; i++) {
		const tern_json *v = ids->items[i];
		TERN_RETURN_IF(v->type != TERN_JSON_NUMBER || !v->is_int || v->integer < 0 || v->integer > UINT32_MAX,
			       err, TERN_EFORMAT, "%s:%d: token_ids[%zu] is not a token id", path, line, i);
		r->token_ids[i] = (uint32_t)v->integer;
	}
	TERN_FORWARD_IF_ERROR(get_array(o, "stop", sizeof *r->stop, &r->stop, &r->n_stop, &stop, path, line, err));
	for (size_t i = 0; stop && i < stop->len; i++) {
		TERN_RETURN_IF(stop->items[i]->type != TERN_JSON_STRING, err, TERN_EFORMAT,
			       "%s:%d: stop[%zu] is not a string", path, line, i);
		r->stop[i] = (char *)stop->items[i]->str;
	}
	TERN_FORWARD_IF_ERROR(
	    get_array(o, "messages", sizeof *r->messages, &r->messages, &r->n_messages, &msgs, path, line, err));
	for (size_t i = 0; msgs && i < msgs->len; i++) {
		Tern__V1__ChatMessage *m = malloc(sizeof *m);
		TERN_RETURN_IF(!m, err, TERN_ENOMEM, "out of memory");
		tern__v1__chat_message__init(m);
		m->role = (char *)tern_json_get_str(msgs->items[i], "role", "");
		m->content = (char *)tern_json_get_str(msgs->items[i], "content", "");
		r->messages[i] = m;
	}
	return 0;
}

static void free_request(Tern__V1__GenerateRequest *r)
{
	free(r->token_ids);
	free(r->stop);
	for (size_t i = 0; r->messages && i < r->n_messages; i++)
		free(r->messages[i]);
	free(r->messages);
}

int tern_coord_batch(tern_sched *s, const char *in_path, const char *out_path, tern_err *err)
{
	FILE *in = fopen(in_path, "r");
	TERN_RETURN_IF(!in, err, TERN_EIO, "cannot open %s", in_path);
	/* Read every line first: a malformed one stops the run before any work. */
	char **lines = NULL;
	size_t n_lines = 0, cap_lines = 0;
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t got;
	int rc = 0;
	while ((got = getline(&line, &line_cap, in)) >= 0) {
		size_t l = (size_t)got;
		while (l && (line[l - 1] == '\n' || line[l - 1] == '\r' || line[l - 1] == ' '))
			line[--l] = '\0';
		if (n_lines == cap_lines) {
			cap_lines = cap_lines ? cap_lines * 2 : 64;
			char **nl = realloc(lines, cap_lines * sizeof *nl);
			if (!nl) {
				rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
				break;
			}
			lines = nl;
		}
		/* A line lost to memory would be a request silently dropped. */
		if (!(lines[n_lines] = strdup(line))) {
			rc = TERN_ERR(err, TERN_ENOMEM, "out of memory reading %s", in_path);
			break;
		}
		n_lines++;
	}
	free(line);
	fclose(in);
	const size_t n = n_lines;
	tern_json_doc **docs = calloc(n ? n : 1, sizeof *docs);
	Tern__V1__GenerateRequest *reqs = calloc(n ? n : 1, sizeof *reqs);
	Tern__V1__SamplingParams *sps = calloc(n ? n : 1, sizeof *sps);
	job *jobs = calloc(n ? n : 1, sizeof *jobs);
	int *line_of = calloc(n ? n : 1, sizeof *line_of);
	if (rc == 0 && (!docs || !reqs || !sps || !jobs || !line_of))
		rc = TERN_ERR(err, TERN_ENOMEM, "out of memory");
	size_t n_jobs = 0;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		if (!lines[i][0])
			continue; /* blank lines are allowed */
		char what[600];
		snprintf(what, sizeof what, "%s:%zu", in_path, i + 1);
		const size_t j = n_jobs;
		tern__v1__generate_request__init(&reqs[j]);
		tern__v1__sampling_params__init(&sps[j]);
		rc = tern_json_parse(&docs[j], lines[i], strlen(lines[i]), what, err);
		if (rc == 0)
			rc = build_request(tern_json_root(docs[j]), &reqs[j], &sps[j], in_path, (int)i + 1, err);
		line_of[j] = (int)i + 1;
		n_jobs++;
	}
	if (rc == 0) {
		tern_sched_set_queue_limit(s, (int)n_jobs + 1);
		const tern_service *svc = tern_sched_service(s);
		for (size_t j = 0; j < n_jobs; j++) {
			snprintf(jobs[j].id, sizeof jobs[j].id, "%s", reqs[j].request_id);
			jobs[j].score = reqs[j].score_prompt;
			tern_gen_sink sink = {&jobs[j], on_piece, on_done, NULL};
			uint64_t h;
			char msg[512] = "";
			const int st = svc->generate(svc->self, &reqs[j], &sink, &h, msg, sizeof msg);
			if (st != TERN_STATUS_OK) {
				jobs[j].done = 1;
				jobs[j].status = st;
				snprintf(jobs[j].error, sizeof jobs[j].error, "line %d: %s", line_of[j], msg);
			}
		}
		rc = tern_sched_run(s, 1, err);
		/* A stop (SIGTERM, a failed pipeline) can leave requests unfinished:
		 * end them now, while their jobs exist, so the output names them and
		 * no callback reaches a freed job later (tern_sched_shutdown again
		 * after this finds nothing live). */
		tern_sched_shutdown(s, "the batch stopped before this request finished");
	}
	if (rc == 0) {
		FILE *out = fopen(out_path, "w");
		if (!out) {
			rc = TERN_ERR(err, TERN_EIO, "cannot write %s", out_path);
		} else {
			for (size_t j = 0; j < n_jobs && rc == 0; j++) {
				const job *b = &jobs[j];
				json_t *o = json_object(), *ids = json_array();
				for (size_t k = 0; ids && k < b->n_ids; k++)
					json_array_append_new(ids, json_integer(b->ids[k]));
				json_object_set_new(o, "id", tern_api_json_text(b->id, strlen(b->id)));
				json_object_set_new(o, "text", tern_api_json_text(b->text, b->text_len));
				json_object_set_new(o, "token_ids", ids);
				json_object_set_new(o, "finish_reason", json_string(tern_api_finish_reason_name(b->finish_reason)));
				json_object_set_new(o, "prompt_tokens", json_integer(b->prompt_tokens));
				json_object_set_new(o, "completion_tokens", json_integer(b->completion_tokens));
				if (b->score) {
					json_object_set_new(o, "prompt_nll", json_real(b->prompt_nll));
					json_object_set_new(o, "scored_tokens", json_integer(b->scored_tokens));
				}
				if (b->status != TERN_STATUS_OK)
					json_object_set_new(o, "error", tern_api_json_text(b->error, strlen(b->error)));
				if (tern_api_json_line(out, o) < 0)
					rc = TERN_ERR(err, TERN_EIO, "cannot write %s", out_path);
			}
			if (fclose(out) != 0 && rc == 0)
				rc = TERN_ERR(err, TERN_EIO, "cannot write %s", out_path);
		}
	}
	for (size_t j = 0; j < n_jobs; j++) {
		free_request(&reqs[j]);
		tern_json_free(docs[j]);
		free(jobs[j].text);
		free(jobs[j].ids);
	}
	for (size_t i = 0; i < n_lines; i++)
		free(lines[i]);
	free(lines);
	free(docs);
	free(reqs);
	free(sps);
	free(jobs);
	free(line_of);
	return rc;
}
