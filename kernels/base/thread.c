/* thread.c: a detached thread (see tern-base.h). */
#include "tern-base.h"

#include <pthread.h>

int tern_thread_detached(void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	if (pthread_attr_init(&attr) != 0)
		return -1;
	pthread_t t;
	const int rc =
	    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 && pthread_create(&t, &attr, fn, arg) == 0
		? 0
		: -1;
	pthread_attr_destroy(&attr);
	return rc;
}
