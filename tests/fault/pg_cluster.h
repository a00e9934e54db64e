/* SPDX-License-Identifier: MIT */
/*
 * pg_cluster.h - where a restart test puts its private cluster (deploy/pg.sh): the first port of
 * its range that is free and on which the cluster starts. The tests that stop their database
 * (test_db_restart.c, test_service_db_restart.c) each take a range of their own, and never the
 * shared cluster other tests use.
 *
 * Another run on the same machine (another tree's, a suite beside this one) may choose from the
 * same range, so a port free when looked at can be taken before the server binds it: then the
 * next free one is tried. Each port gets its own data directory, because pg.sh writes the port
 * into the cluster at initdb.
 */
#ifndef HS_TEST_PG_CLUSTER_H
#define HS_TEST_PG_CLUSTER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* True when nothing listens on (or holds) 127.0.0.1:port right now. */
static inline bool pgc_port_is_free(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

    if (fd >= 0)
        close(fd);
    return ok;
}

/* The data directory of the cluster on port: prefix-<port>, into out (cap bytes). */
static inline void pgc_data_dir(char *out, size_t cap, const char *prefix, int port)
{
    snprintf(out, cap, "%s-%d", prefix, port);
}

/*
 * Starts the cluster on the first port of first..last that is free and on which start() succeeds.
 * Before each try it sets HS_PG_PORT to the port and HS_PG_DATA to its data directory under
 * prefix (pgc_data_dir, also written into data, cap bytes); start runs pg.sh start however the
 * test runs commands, and returns 0 once the cluster runs (else it cleans up what it left).
 * Returns the port, or -1 when no port of the range worked.
 */
static inline int pgc_start(int first, int last, const char *prefix, char *data, size_t cap,
                            int (*start)(void))
{
    char port[16];

    for (int p = first; p <= last; p++) {
        if (!pgc_port_is_free(p))
            continue;
        pgc_data_dir(data, cap, prefix, p);
        snprintf(port, sizeof(port), "%d", p);
        setenv("HS_PG_PORT", port, 1);
        setenv("HS_PG_DATA", data, 1);
        if (start() == 0)
            return p;
        fprintf(stderr, "could not start a cluster on port %d; trying the next one\n", p);
    }
    return -1;
}

#endif /* HS_TEST_PG_CLUSTER_H */
