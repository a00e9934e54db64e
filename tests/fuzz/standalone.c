/* SPDX-License-Identifier: MIT */
/*
 * standalone.c - a libFuzzer-compatible driver for compilers without libFuzzer.
 *
 *     fuzz_<name> <corpus dir or file>...
 *
 * First every seed (each file of each directory, in name order) is run as it is, then
 * HS_FUZZ_RUNS inputs made by mutating the seeds. The mutations come from a small PRNG seeded by
 * HS_FUZZ_SEED (by default the clock, printed at the start), so a failing run is replayed exactly
 * by setting the printed seed. Each input is a malloc'd copy of exactly its size, so a target that
 * reads one byte too far trips AddressSanitizer as it would under libFuzzer.
 *
 * Whatever ends the run - a target's fuzz_fail (abort), a sanitizer report, a crash signal, or an
 * input running past HS_FUZZ_TIMEOUT seconds (a hang) - the input being run is first written to
 * fuzz-<name>-crash.bin in the working directory, ready to replay or to add to the corpus. The
 * writing happens in a signal handler, so it uses only open/write/close.
 *
 * The mutations are the classic blind ones (bit flips, interesting bytes and tokens, deleting,
 * repeating and splicing ranges): no coverage feedback, which is what libFuzzer adds when clang
 * is available. Repeating a range is what grows a seed's nesting or length far past its size.
 */
#define _GNU_SOURCE /* scandir, alphasort */

#include "fuzz.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/common_interface_defs.h>
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

/* Largest mutated input; the biggest seed (10,000 levels of nesting) fits several times. */
#define INPUT_MAX (128 * 1024)

typedef struct input {
    uint8_t *data;
    size_t len;
} input;

static input *seeds;
static size_t nseeds;
static const uint8_t *current;
static size_t current_len;
static char crash_path[64];

/* write(2) for a signal handler: nothing better can be done if it fails. */
static void say(const char *s)
{
    if (write(2, s, strlen(s)) < 0)
        return;
}

static void save_current(void)
{
    int fd;

    if (current == NULL)
        return;
    fd = open(crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    for (size_t off = 0; off < current_len;) {
        ssize_t n = write(fd, current + off, current_len - off);

        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(fd);
    say("fuzz: the failing input is in ");
    say(crash_path);
    say("\n");
}

static void on_fatal(int sig)
{
    if (sig == SIGALRM) {
        say("fuzz: an input ran past HS_FUZZ_TIMEOUT seconds (a hang)\n");
        sig = SIGABRT;
    }
    save_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void catch_fatal_signals(void)
{
    /* AddressSanitizer reports SEGV/BUS/FPE itself and then runs the death callback; taking
     * those signals from it would lose its report. It leaves SIGABRT alone. */
    static const int mine[] = {SIGABRT, SIGALRM, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    size_t n = UNDER_ASAN ? 2 : sizeof(mine) / sizeof(mine[0]);

    for (size_t i = 0; i < n; i++)
        signal(mine[i], on_fatal);
#if UNDER_ASAN
    __sanitizer_set_death_callback(save_current);
#endif
}

static uint64_t rng_state;

/* xorshift64*: fast, and its whole state is the printed seed. */
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static size_t below(size_t n)
{
    return n == 0 ? 0 : (size_t)(rng() % n);
}

static void add_seed(const char *path)
{
    FILE *f = fopen(path, "rb");
    input *grown;
    uint8_t *data;
    long len;

    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0 || len > INPUT_MAX ||
        fseek(f, 0, SEEK_SET) != 0) {
        fprintf(stderr, "fuzz: cannot read %s (or it is larger than %d bytes)\n", path, INPUT_MAX);
        exit(2);
    }
    data = malloc((size_t)len + 1);
    grown = realloc(seeds, (nseeds + 1) * sizeof(*seeds));
    if (data == NULL || grown == NULL || fread(data, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "fuzz: cannot load %s\n", path);
        exit(2);
    }
    fclose(f);
    seeds = grown;
    seeds[nseeds].data = data;
    seeds[nseeds].len = (size_t)len;
    nseeds++;
}

static void add_path(const char *path)
{
    struct dirent **names;
    struct stat st;
    int n;

    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        add_seed(path);
        return;
    }
    n = scandir(path, &names, NULL, alphasort);
    if (n < 0) {
        perror(path);
        exit(2);
    }
    for (int i = 0; i < n; i++) {
        char file[4096];

        if (names[i]->d_name[0] != '.') {
            snprintf(file, sizeof(file), "%s/%s", path, names[i]->d_name);
            add_seed(file);
        }
        free(names[i]);
    }
    free(names);
}

static unsigned timeout_s;

static void run_one(const uint8_t *data, size_t len)
{
    /* An exact-size copy: libFuzzer's guarantee, and what makes an over-read visible. */
    uint8_t *copy = malloc(len > 0 ? len : 1);

    if (copy == NULL) {
        fputs("fuzz: out of memory\n", stderr);
        exit(2);
    }
    memcpy(copy, data, len);
    current = copy;
    current_len = len;
    alarm(timeout_s);
    LLVMFuzzerTestOneInput(copy, len);
    alarm(0);
    current = NULL;
    free(copy);
}

static const uint8_t interesting_bytes[] = {0x00, 0xff, 0x80, 0xc0, 0xed, 0x7f, '%', '/', '{',
                                            '}',  '[',  ']',  '"',  '\\', '=',  '&', ' ', '-',
                                            ':',  ',',  '0',  '9',  '\n', 'e',  '+', '.'};

static const char *const tokens[] = {"9223372036854775807",
                                     "9223372036854775808",
                                     "-9223372036854775808",
                                     "-9223372036854775809",
                                     "18446744073709551616",
                                     "1e400",
                                     "-0",
                                     "0x10",
                                     "00",
                                     "\\u0000",
                                     "\\ud800",
                                     "\\udfff",
                                     "\xf4\x90\x80\x80",
                                     "\xc0\xaf",
                                     "\xed\xa0\x80",
                                     "%00",
                                     "%ff",
                                     "%2F",
                                     "%2e%2e",
                                     "%",
                                     "/../",
                                     "//",
                                     "{id}",
                                     "{}",
                                     "[]",
                                     "null",
                                     "true",
                                     "false",
                                     "\"\"",
                                     "\"a\":1,\"a\":2",
                                     "=&",
                                     "--"};

/* Inserts n bytes of src at pos in buf (len bytes used); returns the new length. */
static size_t insert(uint8_t *buf, size_t len, size_t pos, const void *src, size_t n)
{
    if (len + n > INPUT_MAX)
        n = INPUT_MAX - len;
    memmove(buf + pos + n, buf + pos, len - pos);
    memcpy(buf + pos, src, n);
    return len + n;
}

static size_t mutate_once(uint8_t *buf, size_t len)
{
    size_t pos = below(len + 1);
    size_t n;

    switch (rng() % 9) {
    case 0:
        if (len > 0)
            buf[below(len)] ^= (uint8_t)(1u << below(8));
        return len;
    case 1:
        if (len > 0)
            buf[below(len)] = (uint8_t)rng();
        return len;
    case 2:
        if (len > 0)
            buf[below(len)] = interesting_bytes[below(sizeof(interesting_bytes))];
        return len;
    case 3: {
        uint8_t b =
            rng() % 2 ? (uint8_t)rng() : interesting_bytes[below(sizeof(interesting_bytes))];

        return insert(buf, len, pos, &b, 1);
    }
    case 4: {
        const char *t = tokens[below(sizeof(tokens) / sizeof(tokens[0]))];

        return insert(buf, len, pos, t, strlen(t));
    }
    case 5:
        if (len == 0)
            return len;
        pos = below(len);
        n = 1 + below(len - pos < 64 ? len - pos : 64);
        memmove(buf + pos, buf + pos + n, len - pos - n);
        return len - n;
    case 6: {
        /* Repeat a short range many times: nesting, long segments, many arguments. */
        size_t reps = 1 + below(rng() % 4 == 0 ? 4096 : 16);

        if (len == 0)
            return len;
        pos = below(len);
        n = 1 + below(len - pos < 16 ? len - pos : 16);
        if (reps > (INPUT_MAX - len) / n)
            reps = (INPUT_MAX - len) / n;
        /* The range itself stays at pos and its moved original ends the run of copies. */
        memmove(buf + pos + n * reps, buf + pos, len - pos);
        for (size_t i = 1; i < reps; i++)
            memcpy(buf + pos + n * i, buf + pos, n);
        return len + n * reps;
    }
    case 7: {
        const input *other = &seeds[below(nseeds)];
        size_t from = below(other->len);

        n = below(other->len - from + 1);
        return insert(buf, len, pos, other->data + from, n);
    }
    default:
        return below(len + 1);
    }
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);

    return v != NULL && v[0] != '\0' ? strtoull(v, NULL, 0) : dflt;
}

int main(int argc, char **argv)
{
    const char *name = strrchr(argv[0], '/') != NULL ? strrchr(argv[0], '/') + 1 : argv[0];
    uint64_t runs = env_u64("HS_FUZZ_RUNS", HS_FUZZ_DEFAULT_RUNS);
    uint64_t seed = env_u64("HS_FUZZ_SEED", 0);
    uint8_t *buf = malloc(INPUT_MAX);

    if (argc < 2 || buf == NULL) {
        fprintf(stderr, "usage: %s <corpus dir or file>...\n", name);
        return 2;
    }
    snprintf(crash_path, sizeof(crash_path), "%.40s-crash.bin", name);
    timeout_s = (unsigned)env_u64("HS_FUZZ_TIMEOUT", 10);
    catch_fatal_signals();
    for (int i = 1; i < argc; i++)
        add_path(argv[i]);
    if (nseeds == 0) {
        fprintf(stderr, "%s: no seeds\n", name);
        return 2;
    }
    if (seed == 0)
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("%s: %zu seeds, then %" PRIu64 " mutations with HS_FUZZ_SEED=%" PRIu64 "\n", name,
           nseeds, runs, seed);
    fflush(stdout);
    for (size_t i = 0; i < nseeds; i++)
        run_one(seeds[i].data, seeds[i].len);
    rng_state = seed;
    for (uint64_t r = 0; r < runs; r++) {
        const input *s = &seeds[below(nseeds)];
        size_t len = s->len;
        size_t steps = 1 + below(6);

        memcpy(buf, s->data, len);
        for (size_t k = 0; k < steps; k++)
            len = mutate_once(buf, len);
        run_one(buf, len);
    }
    printf("%s: %" PRIu64 " inputs, no failure\n", name, (uint64_t)nseeds + runs);
    for (size_t i = 0; i < nseeds; i++)
        free(seeds[i].data);
    free(seeds);
    free(buf);
    return 0;
}
