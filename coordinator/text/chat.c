/* chat.c: the BitNet b1.58 2B4T chat template (MODEL-FORMATS 1.6). The
 * template is fixed text, so it is rendered directly rather than through a
 * Jinja interpreter. */
#include "tern-tokenizer.h"

#include <stdlib.h>
#include <string.h>

typedef struct cbuf {
	char *p;
	size_t n, cap;
	int oom;
} cbuf;

static void put(cbuf *b, const char *s)
{
	const size_t n = strlen(s);
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : 256;
		while (nc < b->n + n + 1)
			nc *= 2;
		char *q = realloc(b->p, nc);
		if (!q) {
			b->oom = 1;
			return;
		}
		b->p = q;
		b->cap = nc;
	}
	memcpy(b->p + b->n, s, n + 1);
	b->n += n;
}

int tern_chat_render(tern_chat_style style, const tern_chat_msg *msgs, size_t n, int add_generation_prompt, char **out,
		     size_t *len, tern_err *err)
{
	*out = NULL;
	*len = 0;
	TERN_RETURN_IF(style != TERN_CHAT_BITNET && style != TERN_CHAT_BITNET_HF, err, TERN_EINVAL,
		       "chat: unknown template style %d", (int)style);
	TERN_RETURN_IF(n && !msgs, err, TERN_EINVAL, "chat: NULL message list");
	cbuf b = {0};
	put(&b, "");
	for (size_t i = 0; i < n; i++) {
		const char *role = msgs[i].role, *c = msgs[i].content;
		if (!role || !c) {
			free(b.p);
			return TERN_ERR(err, TERN_EINVAL, "chat: message %zu has no %s", i, role ? "content" : "role");
		}
		const char *label;
		if (!strcmp(role, "system"))
			label = "System: ";
		else if (!strcmp(role, "user"))
			label = "User: ";
		else if (!strcmp(role, "assistant"))
			label = "Assistant: ";
		else {
			free(b.p);
			return TERN_ERR(err, TERN_EINVAL,
					"chat: message %zu has unknown role \"%.40s\" "
					"(system, user, assistant)",
					i, role);
		}
		if (style == TERN_CHAT_BITNET_HF) {
			put(&b, label);
			put(&b, c);
			put(&b, "<|eot_id|>");
		} else if (label[0] == 'S') {
			put(&b, "System: ");
			put(&b, c);
		} else if (label[0] == 'U') {
			/* The built-in template opens the assistant turn inside the user
			 * turn; an assistant message is its bare content. */
			put(&b, "User: ");
			put(&b, c);
			put(&b, "<|eot_id|>Assistant: ");
		} else {
			put(&b, c);
		}
	}
	if (style == TERN_CHAT_BITNET_HF && add_generation_prompt)
		put(&b, "Assistant: ");
	if (b.oom) {
		free(b.p);
		return TERN_ERR(err, TERN_ENOMEM, "chat: no memory");
	}
	*out = b.p;
	*len = b.n;
	return 0;
}
