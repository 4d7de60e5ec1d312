/* tern-page.h: the chat page tern-server serves at GET / (page/chat.html),
 * compiled in: page/page-embed.cmake writes it as C into the build tree. */
#ifndef TERN_PAGE_H
#define TERN_PAGE_H

#include <stddef.h>

/* The page, UTF-8 HTML with its script and style inline. (tern_page_chat_html_len) */
extern const unsigned char tern_page_chat_html[];
extern const size_t tern_page_chat_html_len;
/* The Content-Security-Policy header it is served with: nothing runs or
 * loads but its own inline script and style (allowed by their SHA-256) and
 * requests to the same origin. */
extern const char tern_page_chat_csp[];

#endif /* TERN_PAGE_H */
