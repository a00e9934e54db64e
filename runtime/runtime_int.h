/* SPDX-License-Identifier: MIT */
/*
 * runtime_int.h - what the runtime's modules share with each other and with nobody else.
 */
#ifndef RT_RUNTIME_INT_H
#define RT_RUNTIME_INT_H

#include "task.h"

/* rt_task.flags bits. */
enum {
    RT__TASK_RELEASE_PENDING = 1u << 0, /* released inside its own callback: finish after it */
    RT__TASK_SCOPED = 1u << 1,          /* t->owner is an rt_scope told after t's callback */
};

/* Called by task delivery after the callback of a task spawned into a scope (t->owner). */
void rt__scope_child_delivered(rt_task *t);

#endif /* RT_RUNTIME_INT_H */
