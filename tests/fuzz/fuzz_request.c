/* fuzz_request.c: libFuzzer target for the request path of the gRPC
 * service: the bytes a client sends are decoded as a tern.v1.GenerateRequest
 * (as grpc-server.c does) and handed to the scheduler's generate(), which
 * validates and tokenizes them. An accepted request runs to its end on a
 * tiny in-memory model (small max_tokens), or is cancelled. Everything must
 * end in a status; nothing may crash or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-sched.h"
#include "test-bpe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { VOCAB = 259, EMBD = 64 };

static tern_tokenizer *tok;
static tern_head *head;
static tern_layers layers;
static tern_engine *engine;
static float emb[VOCAB * EMBD], out_norm[EMBD];

/* A byte-level BPE vocabulary: the 256 byte symbols (GPT-2's map), two
 * merges' results and BOS/EOS. */
static void setup(void)
{
	static char *tokens[VOCAB];
	static int32_t types[VOCAB];
	int extra = 0;
	for (int b = 0; b < 256; b++) {
		int keep = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
		unsigned cp = keep ? (unsigned)b : 0x100u + (unsigned)extra++;
		char *s = malloc(4);
		if (cp < 0x80) {
			s[0] = (char)cp, s[1] = 0;
		} else {
			s[0] = (char)(0xc0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3f)), s[2] = 0;
		}
		tokens[b] = s;
		types[b] = TERN_TOKTYPE_NORMAL;
	}
	tokens[256] = strdup("he");
	types[256] = TERN_TOKTYPE_NORMAL;
	tokens[257] = strdup("<|begin_of_text|>");
	types[257] = TERN_TOKTYPE_CONTROL;
	tokens[258] = strdup("<|end_of_text|>");
	types[258] = TERN_TOKTYPE_CONTROL;
	static const char *merges[] = {"h e"};
	tern_tokenizer_desc d;
	tt_bpe_desc(&d, VOCAB, tokens, types, 1, merges);
	d.bos_id = 257;
	d.eos_id = 258;
	d.add_bos = 1;
	if (tern_tokenizer_create(&d, &tok, NULL) < 0)
		abort();
	uint32_t x = 1;
	for (int i = 0; i < VOCAB * EMBD; i++) {
		x = x * 1664525u + 1013904223u;
		emb[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.25f;
	}
	for (int i = 0; i < EMBD; i++)
		out_norm[i] = 1.0f;
	const tern_head_config hc = {VOCAB, EMBD, TERN_DTYPE_F32, emb, 0, out_norm, 1e-5f, TERN_ISA_AUTO, TERN_HEAD_FILE, NULL, TERN_DTYPE_NONE, NULL, 0, 0};
	if (tern_head_create(&hc, &head, NULL) < 0)
		abort();
	tern_hparams hp;
	memset(&hp, 0, sizeof hp);
	strcpy(hp.arch, "bitnet-b1.58");
	hp.n_embd = EMBD, hp.n_layer = 1, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 16, hp.n_ff = 128;
	hp.n_vocab = VOCAB, hp.n_ctx_train = 64, hp.rope_theta = 10000.0f, hp.norm_eps = 1e-5f;
	hp.tied_embeddings = 1, hp.bos_id = 257, hp.eos_id = 258, hp.eot_id = -1;
	uint64_t seed = 7;
	tern_layer_source src = tern_layers_random_source(&seed);
	if (tern_layers_build(&layers, &hp, 0, 1, TERN_PACK_TL2, &src, NULL) < 0)
		abort();
	const tern_engine_config ec = {.n_slots = 4, .n_ctx = 64, .max_rows = 64, .isa = TERN_ISA_AUTO};
	if (tern_engine_create(&layers, &ec, &engine, NULL) < 0)
		abort();
	int slot;
	while (tern_kv_slot_alloc(tern_engine_kv(engine), &slot, NULL) == 0)
		;
}

static void on_piece(void *ctx, const Tern__V1__GenerateResponse *m)
{
	(void)ctx;
	if (!m->text)
		abort();
}

static void on_done(void *ctx, const Tern__V1__GenerateResponse *fin, int status, const char *details)
{
	*(int *)ctx = 1;
	if (status == TERN_STATUS_OK && (!fin || !fin->done))
		abort();
	if (status != TERN_STATUS_OK && !details)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!tok)
		setup();
	Tern__V1__GenerateRequest *req = tern__v1__generate_request__unpack(NULL, size, data);
	if (!req)
		return 0; /* the server answers INVALID_ARGUMENT before the scheduler */
	tern_sched_backend be;
	if (tern_sched_local_backend(engine, &be, NULL) < 0)
		abort();
	const tern_sched_config sc = {.n_embd = EMBD, .n_vocab = VOCAB, .n_slots = 4, .n_ctx = 64, .max_rows = 64,
				      .prefill_chunk = 16, .queue_limit = 4, .default_max_tokens = 4,
				      .max_prompt_bytes = 4096, .tok = tok, .head = head};
	tern_sched *s = NULL;
	if (tern_sched_create(&sc, &be, &s, NULL) < 0)
		abort();
	const tern_service *svc = tern_sched_service(s);
	int done = 0;
	tern_gen_sink sink = {&done, on_piece, on_done, NULL};
	uint64_t h = 0;
	char msg[512] = "";
	const int st = svc->generate(svc->self, req, &sink, &h, msg, sizeof msg);
	if (st == TERN_STATUS_OK) {
		if (req->max_tokens > 4 || req->max_tokens == 0)
			svc->cancel(svc->self, h);
		if (tern_sched_run(s, 1, NULL) < 0)
			abort();
		if (!done)
			abort();
	} else if (!msg[0] || done) {
		abort(); /* a rejection always says why, and the sink is never called */
	}
	tern_sched_free(s);
	tern_sched_local_free(&be);
	tern__v1__generate_request__free_unpacked(req, NULL);
	return 0;
}
