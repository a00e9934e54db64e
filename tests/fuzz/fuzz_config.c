/* SPDX-License-Identifier: MIT */
/*
 * fuzz_config.c - the configuration parser on arbitrary flags and environment values.
 *
 * The input is a list of NUL-separated strings. One that starts with '@' is an environment
 * assignment "@NAME=value", honoured only for the names the settings table reads (learned once
 * from --help, so the target follows the table); every other string is a command-line argument.
 * The parser must end in one of its three outcomes; a refusal must say why on its error stream;
 * and a configuration it accepts must hold what config.h promises of it.
 */
#define _GNU_SOURCE /* open_memstream */

#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service/config.h"

#define MAX_ARGS 32

static char env_names[64][40];
static size_t nenv;

/* The environment names, from the second column of --help's setting lines. */
static void learn_env_names(void)
{
    char *argv[] = {"hindsight", "--help", NULL};
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    svc_config c;
    char *line;
    char *rest;

    FUZZ_CHECK(out != NULL);
    FUZZ_CHECK(svc_config_parse(&c, 2, argv, out, out) == SVC_CONFIG_EXIT_OK);
    svc_config_free(&c);
    fclose(out);
    rest = text;
    while ((line = strsep(&rest, "\n")) != NULL && nenv < 64) {
        char flag[64];
        char env[40];

        if (sscanf(line, " --%63s %39s", flag, env) == 2 && env[0] >= 'A' && env[0] <= 'Z')
            strcpy(env_names[nenv++], env);
    }
    free(text);
    FUZZ_CHECK(nenv > 0);
}

static bool is_setting(const char *name, size_t len)
{
    for (size_t i = 0; i < nenv; i++) {
        if (strlen(env_names[i]) == len && memcmp(env_names[i], name, len) == 0)
            return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strndup(data, size);
    char *argv[MAX_ARGS + 1] = {"hindsight"};
    int argc = 1;
    char *errs = NULL;
    size_t errs_len = 0;
    FILE *out;
    FILE *err;
    svc_config c;
    int rc;

    if (nenv == 0)
        learn_env_names();
    for (size_t i = 0; i < nenv; i++)
        unsetenv(env_names[i]);
    for (char *s = text; s <= text + size && argc < MAX_ARGS; s += strlen(s) + 1) {
        char *eq = strchr(s, '=');

        if (s[0] != '@') {
            argv[argc++] = s;
        } else if (eq != NULL && is_setting(s + 1, (size_t)(eq - s - 1))) {
            *eq = '\0';
            FUZZ_CHECK(setenv(s + 1, eq + 1, 1) == 0);
            *eq = '=';
        }
    }
    argv[argc] = NULL;
    out = fopen("/dev/null", "w");
    err = open_memstream(&errs, &errs_len);
    FUZZ_CHECK(out != NULL && err != NULL);
    rc = svc_config_parse(&c, argc, argv, out, err);
    fclose(err);
    fclose(out);
    switch (rc) {
    case SVC_CONFIG_RUN:
        FUZZ_CHECK(errs_len == 0);
        FUZZ_CHECK(c.port >= 0 && c.port <= 65535);
        FUZZ_CHECK(c.max_connections >= 1);
        FUZZ_CHECK(c.max_connections_per_ip >= 1 && c.max_connections_per_ip <= c.max_connections);
        FUZZ_CHECK(c.database_url == NULL || c.database_url[0] != '\0');
        FUZZ_CHECK(c.host != NULL && svc_config_is_ip_literal(c.host));
        break;
    case SVC_CONFIG_EXIT_OK:
        break;
    case SVC_CONFIG_EXIT_USAGE:
        FUZZ_CHECK(errs_len > 0 && errs[errs_len - 1] == '\n');
        break;
    default:
        fuzz_fail("svc_config_parse returned %d", rc);
    }
    svc_config_free(&c);
    free(errs);
    free(text);
    return 0;
}
