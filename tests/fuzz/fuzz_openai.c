/* fuzz_openai.c: libFuzzer target for tern-server's request parser: the HTTP
 * body of /v1/chat/completions and /v1/completions (tern_oai_parse), read
 * both ways. An accepted request is packed as the GenerateRequest sent to
 * the coordinator (every pointer it holds is walked), and the reply builders
 * run on the body's bytes as if they were generated text. Every input must
 * end in 0 or a 400, never a crash or a leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tern-openai.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int chat = 0; chat <= 1; chat++) {
		tern_oai_request r;
		tern_oai_error e;
		if (tern_oai_parse((const char *)data, size, chat, &r, &e) == 0) {
			const size_t n = protobuf_c_message_get_packed_size(&r.gen.base);
			uint8_t *buf = malloc(n ? n : 1);
			if (buf)
				protobuf_c_message_pack(&r.gen.base, buf);
			free(buf);
		} else if (e.http_status != 400 || !e.message[0]) {
			abort();
		}
		tern_oai_request_free(&r);
	}
	/* Reply builders: text that is not UTF-8 still gives a JSON reply. */
	const char *text = (const char *)data;
	Tern__V1__Usage u = TERN__V1__USAGE__INIT;
	free(tern_oai_completion_json(1, "chatcmpl-x", 1, "m", text, size, 1, &u, NULL));
	free(tern_oai_chunk_json(1, "chatcmpl-x", 1, "m", 1, text, size, -1, NULL));
	free(tern_oai_chunk_json(0, "cmpl-x", 1, "m", 0, text, size, 2, NULL));
	/* Logprobs of tokens whose bytes are the input (any bytes: a byte token
	 * may hold part of a character), with the input's halves as rivals. */
	for (int chat = 0; chat < 2; chat++) {
		tern_oai_logprobs *lp = tern_oai_logprobs_new(chat);
		if (!lp)
			continue;
		Tern__V1__TokenLogprob alt[2], *alts[2];
		for (int i = 0; i < 2; i++) {
			tern__v1__token_logprob__init(&alt[i]);
			alt[i].token_bytes.data = (uint8_t *)data + (i ? size / 2 : 0);
			alt[i].token_bytes.len = i ? size - size / 2 : size / 2;
			alt[i].logprob = -(float)i;
			alts[i] = &alt[i];
		}
		Tern__V1__GenerateResponse m = TERN__V1__GENERATE_RESPONSE__INIT;
		m.token_bytes.data = (uint8_t *)data;
		m.token_bytes.len = size;
		m.logprob = -0.5f;
		m.n_top_logprobs = 2;
		m.top_logprobs = alts;
		tern_oai_logprobs_add(lp, &m);
		char *j = tern_oai_chunk_json(chat, "x", 1, "m", 0, text, size, -1, lp);
		if (!j && size < 4096)
			abort(); /* every token must still give a reply */
		free(j);
		tern_oai_logprobs_add(lp, &m);
		free(tern_oai_completion_json(chat, "x", 1, "m", text, size, 1, &u, lp));
		tern_oai_logprobs_free(lp);
	}
	return 0;
}
