/*
 * A guest agent for the lab's Linux guests that answers as QEMU's Windows guest agent does.
 *
 * No Windows image exists in the lab, so a Linux guest runs this program instead of qemu-ga on
 * the virtio-serial port org.qemu.guest_agent.0. It speaks the guest-agent protocol (JSON
 * objects, one reply per request, each reply ending in "\n") well enough for libvirt and for
 * the lab:
 *
 *   guest-sync, guest-sync-delimited  echo the id; the delimited reply starts with a 0xFF byte.
 *                                     A 0xFF byte in the input drops any partial request.
 *   guest-ping, guest-info            as any qemu-ga.
 *   guest-get-osinfo                  Windows Server 2022 Datacenter, as qemu-ga reports it
 *                                     from RtlGetVersion and the registry's ProductName.
 *   guest-get-load                    Windows semantics (qemu-ga >= 10.1, commands-win32.c):
 *                                     the three averages start at 0 on the first call, which
 *                                     also starts sampling; every 5 s each average becomes
 *                                     avg * f + queue * (1 - f) with f = exp(-5/60),
 *                                     exp(-5/300), exp(-5/900). Windows samples the
 *                                     "\System\Processor Queue Length" counter: threads ready
 *                                     to run but waiting, without the running ones and
 *                                     without threads waiting for I/O. Here the queue is
 *                                     procs_running from /proc/stat, less this agent (it runs
 *                                     only to take the sample), less the CPUs (each runs one
 *                                     task while tasks wait), floored at 0.
 *   guest-get-cpustats,               the error Windows' qemu-ga gives: GenericError "this
 *   guest-get-diskstats               feature or command is not currently supported".
 *   guest-exec, guest-exec-status     start a program (path, arg, env, input-data,
 *                                     capture-output) without waiting; report exited,
 *                                     exitcode or signal, out-data and err-data (base64).
 *
 * Any other command gets CommandNotFound. Malformed input gets an error reply; the agent
 * keeps running whatever it reads.
 *
 * Usage: qemu-ga -m virtio-serial -p PORT [-s PROC_STAT] [-t LOAD_PERIOD_MS] [-r RUN_DIR]
 *   -p -   talks over stdin/stdout (ends at end of input).
 *   -r     where guest-exec keeps input and captured output (default /run/qemu-ga-win).
 *   -s     where to read procs_running and the cpuN lines (default /proc/stat).
 *   -t     the sampling period of guest-get-load in ms (default 5000, as on Windows).
 *
 * Built by guestload_lab/windows_agent.py: gcc -static -O2.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT_VERSION "10.1.0"
#define MAX_MESSAGE (256 * 1024)
#define MAX_DEPTH 64
#define ARENA_SIZE (4 * 1024 * 1024)
#define MAX_PROCESSES 64
#define MAX_ARGS 256
#define MAX_CAPTURE (1024 * 1024)
#define RUN_DIR "/run/qemu-ga-win"
#define UNSUPPORTED "this feature or command is not currently supported"

/* The damping factors of qemu-ga's commands-win32.c: exp(-5 s / window). */
#define LOADAVG_FACTOR_1F 0.9200444146293232478931553241
#define LOADAVG_FACTOR_5F 0.9834714538216174894737477501
#define LOADAVG_FACTOR_15F 0.9944598480048967508795473394

/* ---------------------------------------------------------------- output buffer */

struct buf {
    char *data;
    size_t len, cap;
    int failed;
};

static void buf_reserve(struct buf *b, size_t more)
{
    if (b->failed || b->len + more + 1 <= b->cap) {
        return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1) {
        cap *= 2;
    }
    char *grown = realloc(b->data, cap);
    if (!grown) {
        b->failed = 1;
        return;
    }
    b->data = grown;
    b->cap = cap;
}

static void buf_add(struct buf *b, const char *text, size_t len)
{
    buf_reserve(b, len);
    if (b->failed) {
        return;
    }
    memcpy(b->data + b->len, text, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *text)
{
    buf_add(b, text, strlen(text));
}

static void buf_printf(struct buf *b, const char *format, ...)
{
    char small[256];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(small, sizeof small, format, args);
    va_end(args);
    if (n < 0) {
        b->failed = 1;
    } else if ((size_t)n < sizeof small) {
        buf_add(b, small, (size_t)n);
    } else {
        buf_reserve(b, (size_t)n);
        if (!b->failed) {
            va_start(args, format);
            vsnprintf(b->data + b->len, (size_t)n + 1, format, args);
            va_end(args);
            b->len += (size_t)n;
        }
    }
}

/* The length of the UTF-8 sequence at text (at most len bytes), 0 when it is invalid. */
static size_t utf8_sequence(const unsigned char *text, size_t len)
{
    size_t n = text[0] >= 0xf0 && text[0] <= 0xf4 ? 4
             : text[0] >= 0xe0                    ? 3
             : text[0] >= 0xc2 && text[0] <= 0xdf ? 2
                                                  : 0;
    if (n == 0 || n > len) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((text[i] & 0xc0) != 0x80) return 0;
    }
    return n;
}

/* A JSON string literal of the len bytes at text; invalid UTF-8 becomes U+FFFD. */
static void buf_json_string(struct buf *b, const char *text, size_t len)
{
    buf_puts(b, "\"");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c >= 0x80) {
            size_t n = utf8_sequence((const unsigned char *)text + i, len - i);
            if (n) {
                buf_add(b, text + i, n);
                i += n - 1;
            } else {
                buf_puts(b, "\\ufffd");
            }
            continue;
        }
        switch (c) {
        case '"': buf_puts(b, "\\\""); break;
        case '\\': buf_puts(b, "\\\\"); break;
        case '\n': buf_puts(b, "\\n"); break;
        case '\r': buf_puts(b, "\\r"); break;
        case '\t': buf_puts(b, "\\t"); break;
        default:
            if (c < 0x20 || c == 0x7f) {
                buf_printf(b, "\\u%04x", c);
            } else {
                buf_add(b, (const char *)&c, 1);
            }
        }
    }
    buf_puts(b, "\"");
}

static void buf_json_cstring(struct buf *b, const char *text)
{
    buf_json_string(b, text, strlen(text));
}

static const char BASE64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void buf_base64(struct buf *b, const unsigned char *data, size_t len)
{
    buf_puts(b, "\"");
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)data[i] << 16;
        if (i + 1 < len) v |= (unsigned)data[i + 1] << 8;
        if (i + 2 < len) v |= data[i + 2];
        char out[4] = {
            BASE64[(v >> 18) & 63], BASE64[(v >> 12) & 63],
            i + 1 < len ? BASE64[(v >> 6) & 63] : '=', i + 2 < len ? BASE64[v & 63] : '=',
        };
        buf_add(b, out, 4);
    }
    buf_puts(b, "\"");
}

/* Decodes base64 text in place; the decoded length, or -1 when the text is not base64. */
static long base64_decode(char *text, size_t len)
{
    size_t out = 0;
    unsigned v = 0;
    int bits = 0, padding = 0;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        const char *at = c ? strchr(BASE64, c) : NULL;
        if (c == '=') {
            padding++;
            continue;
        }
        if (c == '\n' || c == '\r' || c == ' ') {
            continue;
        }
        if (!at || padding) {
            return -1;
        }
        v = (v << 6) | (unsigned)(at - BASE64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            text[out++] = (char)((v >> bits) & 0xff);
        }
    }
    return (long)out;
}

/* ---------------------------------------------------------------- JSON values */

enum jtype { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT };

struct jval {
    enum jtype type;
    int boolean;
    int is_integer;
    long long integer;
    char *string;          /* decoded, NUL-terminated (J_STRING) */
    size_t string_len;
    char *key;             /* member name inside an object */
    struct jval *child;    /* first element or member */
    struct jval *next;     /* next sibling */
    const char *raw;       /* the value's text in the request */
    size_t raw_len;
};

static char *arena;
static size_t arena_used;

static void *arena_alloc(size_t size)
{
    size = (size + 15) & ~(size_t)15;
    if (size > ARENA_SIZE - arena_used) {
        return NULL;
    }
    void *p = arena + arena_used;
    arena_used += size;
    memset(p, 0, size);
    return p;
}

struct parser {
    const char *p, *end;
    int depth;
    const char *error;
};

static void skip_space(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) {
        ps->p++;
    }
}

static struct jval *parse_value(struct parser *ps);

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static char *parse_string(struct parser *ps, size_t *out_len)
{
    ps->p++; /* the opening quote */
    const char *start = ps->p;
    size_t max = 0;
    while (ps->p < ps->end && *ps->p != '"') {
        if (*ps->p == '\\') ps->p++;
        ps->p++;
        max++;
    }
    if (ps->p >= ps->end) {
        ps->error = "JSON parse error, unterminated string";
        return NULL;
    }
    char *out = arena_alloc(max * 4 + 1);
    if (!out) {
        ps->error = "JSON message too large";
        return NULL;
    }
    size_t n = 0;
    for (const char *q = start; q < ps->p; q++) {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20) {
            ps->error = "JSON parse error, invalid character in string";
            return NULL;
        }
        if (c != '\\') {
            out[n++] = (char)c;
            continue;
        }
        q++;
        switch (*q) {
        case '"': out[n++] = '"'; break;
        case '\\': out[n++] = '\\'; break;
        case '/': out[n++] = '/'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'n': out[n++] = '\n'; break;
        case 'r': out[n++] = '\r'; break;
        case 't': out[n++] = '\t'; break;
        case 'u': {
            if (ps->p - q < 5) {
                ps->error = "JSON parse error, invalid escape sequence in string";
                return NULL;
            }
            unsigned code = 0;
            for (int i = 1; i <= 4; i++) {
                int d = hex_digit(q[i]);
                if (d < 0) {
                    ps->error = "JSON parse error, invalid escape sequence in string";
                    return NULL;
                }
                code = code * 16 + (unsigned)d;
            }
            q += 4;
            if (code == 0) {
                ps->error = "JSON parse error, \\u0000 is not supported";
                return NULL;
            }
            /* UTF-8 of one UTF-16 unit; surrogate pairs are kept as two units. */
            if (code < 0x80) {
                out[n++] = (char)code;
            } else if (code < 0x800) {
                out[n++] = (char)(0xc0 | (code >> 6));
                out[n++] = (char)(0x80 | (code & 0x3f));
            } else {
                out[n++] = (char)(0xe0 | (code >> 12));
                out[n++] = (char)(0x80 | ((code >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (code & 0x3f));
            }
            break;
        }
        default:
            ps->error = "JSON parse error, invalid escape sequence in string";
            return NULL;
        }
    }
    out[n] = '\0';
    ps->p++; /* the closing quote */
    *out_len = n;
    return out;
}

static struct jval *parse_number(struct parser *ps, struct jval *v)
{
    const char *start = ps->p;
    int integer = 1;
    if (ps->p < ps->end && *ps->p == '-') ps->p++;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9') {
        ps->error = "JSON parse error, invalid number";
        return NULL;
    }
    while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    if (ps->p < ps->end && *ps->p == '.') {
        integer = 0;
        ps->p++;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        integer = 0;
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ps->p++;
    }
    char text[64];
    size_t len = (size_t)(ps->p - start);
    if (len >= sizeof text) {
        ps->error = "JSON parse error, number too long";
        return NULL;
    }
    memcpy(text, start, len);
    text[len] = '\0';
    v->type = J_NUMBER;
    if (integer) {
        errno = 0;
        long long value = strtoll(text, NULL, 10);
        v->is_integer = errno == 0;
        v->integer = value;
    }
    return v;
}

static int parse_literal(struct parser *ps, const char *word)
{
    size_t len = strlen(word);
    if ((size_t)(ps->end - ps->p) < len || memcmp(ps->p, word, len) != 0) {
        ps->error = "JSON parse error, invalid keyword";
        return 0;
    }
    ps->p += len;
    return 1;
}

static struct jval *parse_container(struct parser *ps, struct jval *v, char close)
{
    int object = close == '}';
    struct jval **tail = &v->child;
    v->type = object ? J_OBJECT : J_ARRAY;
    if (++ps->depth > MAX_DEPTH) {
        ps->error = "JSON nesting depth limit exceeded";
        return NULL;
    }
    ps->p++;
    skip_space(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        size_t key_len;
        skip_space(ps);
        if (object) {
            if (ps->p >= ps->end || *ps->p != '"') {
                ps->error = "JSON parse error, expecting member name";
                return NULL;
            }
            if (!(key = parse_string(ps, &key_len))) return NULL;
            skip_space(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                ps->error = "JSON parse error, missing ':' in object pair";
                return NULL;
            }
            ps->p++;
        }
        struct jval *item = parse_value(ps);
        if (!item) return NULL;
        item->key = key;
        *tail = item;
        tail = &item->next;
        skip_space(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            ps->depth--;
            return v;
        }
        ps->error = object ? "JSON parse error, expecting ',' or '}'"
                           : "JSON parse error, expecting ',' or ']'";
        return NULL;
    }
}

static struct jval *parse_value(struct parser *ps)
{
    skip_space(ps);
    if (ps->p >= ps->end) {
        ps->error = "JSON parse error, expecting value";
        return NULL;
    }
    struct jval *v = arena_alloc(sizeof *v);
    if (!v) {
        ps->error = "JSON message too large";
        return NULL;
    }
    const char *start = ps->p;
    struct jval *result = v;
    switch (*ps->p) {
    case '{': result = parse_container(ps, v, '}'); break;
    case '[': result = parse_container(ps, v, ']'); break;
    case '"':
        v->type = J_STRING;
        if (!(v->string = parse_string(ps, &v->string_len))) result = NULL;
        break;
    case 't': v->type = J_BOOL; v->boolean = 1; if (!parse_literal(ps, "true")) result = NULL; break;
    case 'f': v->type = J_BOOL; if (!parse_literal(ps, "false")) result = NULL; break;
    case 'n': v->type = J_NULL; if (!parse_literal(ps, "null")) result = NULL; break;
    default: result = parse_number(ps, v);
    }
    if (result) {
        result->raw = start;
        result->raw_len = (size_t)(ps->p - start);
    }
    return result;
}

static struct jval *member(const struct jval *object, const char *key)
{
    if (!object || object->type != J_OBJECT) return NULL;
    for (struct jval *m = object->child; m; m = m->next) {
        if (m->key && strcmp(m->key, key) == 0) return m;
    }
    return NULL;
}

/* ---------------------------------------------------------------- replies */

static int out_fd = 1;

static void write_all(const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(out_fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            if (poll(&pfd, 1, 5000) <= 0) return; /* nobody reads: drop the reply */
        } else {
            return;
        }
    }
}

struct request {
    const struct jval *id; /* the request's "id" member, echoed in the reply */
    const struct jval *arguments;
};

static void send_reply(const struct request *req, struct buf *body, int delimited)
{
    struct buf out = {0};
    if (delimited) buf_puts(&out, "\xff");
    buf_add(&out, body->data ? body->data : "", body->len);
    if (req && req->id) {
        /* {"return": ...} -> {"return": ..., "id": ...} */
        out.len--;
        buf_puts(&out, ", \"id\": ");
        buf_add(&out, req->id->raw, req->id->raw_len);
        buf_puts(&out, "}");
    }
    buf_puts(&out, "\n");
    if (!out.failed) write_all(out.data, out.len);
    free(out.data);
}

static void reply_return(const struct request *req, const char *value_json)
{
    struct buf body = {0};
    buf_printf(&body, "{\"return\": %s}", value_json);
    if (!body.failed) send_reply(req, &body, 0);
    free(body.data);
}

static void reply_error(const struct request *req, const char *class, const char *desc)
{
    struct buf body = {0};
    buf_puts(&body, "{\"error\": {\"class\": ");
    buf_json_cstring(&body, class);
    buf_puts(&body, ", \"desc\": ");
    buf_json_cstring(&body, desc);
    buf_puts(&body, "}}");
    if (!body.failed) send_reply(req, &body, 0);
    free(body.data);
}

static void reply_errorf(const struct request *req, const char *format, ...)
{
    char desc[512];
    va_list args;
    va_start(args, format);
    vsnprintf(desc, sizeof desc, format, args);
    va_end(args);
    reply_error(req, "GenericError", desc);
}

/* ---------------------------------------------------------------- guest-get-load */

static const char *proc_stat_path = "/proc/stat";
static long load_period_ms = 5000;
static int load_started;
static double load_1m, load_5m, load_15m;

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static long long next_sample_ms;

/* Threads ready to run but waiting: procs_running less this agent less the CPUs, >= 0. */
static int waiting_threads(int *ok)
{
    FILE *f = fopen(proc_stat_path, "r");
    char line[512];
    long running = -1;
    long cpus = 0;
    *ok = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "cpu", 3) == 0 && line[3] >= '0' && line[3] <= '9') {
            cpus++;
        } else if (strncmp(line, "procs_running ", 14) == 0) {
            running = strtol(line + 14, NULL, 10);
        }
        if (!strchr(line, '\n')) {
            int c;
            while ((c = fgetc(f)) != EOF && c != '\n') {
            }
        }
    }
    fclose(f);
    if (running < 0 || cpus < 1) return 0;
    *ok = 1;
    long waiting = running - 1 - cpus;
    return waiting > 0 ? (int)(waiting > INT_MAX ? INT_MAX : waiting) : 0;
}

static void sample_load(void)
{
    int ok;
    double queue = waiting_threads(&ok);
    if (!ok) return; /* as Windows' callback: skip a sample it cannot read */
    load_1m = load_1m * LOADAVG_FACTOR_1F + queue * (1.0 - LOADAVG_FACTOR_1F);
    load_5m = load_5m * LOADAVG_FACTOR_5F + queue * (1.0 - LOADAVG_FACTOR_5F);
    load_15m = load_15m * LOADAVG_FACTOR_15F + queue * (1.0 - LOADAVG_FACTOR_15F);
}

static void tick_load(void)
{
    if (!load_started) return;
    long long now = now_ms();
    if (now < next_sample_ms) return;
    sample_load();
    next_sample_ms += load_period_ms;
    if (next_sample_ms <= now) next_sample_ms = now + load_period_ms; /* late: no burst */
}

static void cmd_get_load(const struct request *req)
{
    if (!load_started) {
        load_started = 1;
        load_1m = load_5m = load_15m = 0;
        next_sample_ms = now_ms() + load_period_ms;
    }
    char value[256];
    snprintf(value, sizeof value, "{\"load15m\": %.17g, \"load5m\": %.17g, \"load1m\": %.17g}",
             load_15m, load_5m, load_1m);
    reply_return(req, value);
}

/* ---------------------------------------------------------------- guest-exec */

struct process {
    pid_t pid;
    int running;
    int status;
    char out_path[PATH_MAX], err_path[PATH_MAX];
    int capture_out, capture_err;
    long long started;
};

static struct process processes[MAX_PROCESSES];
static const char *run_dir = RUN_DIR;

static void reap_children(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_PROCESSES; i++) {
            if (processes[i].pid == pid && processes[i].running) {
                processes[i].running = 0;
                processes[i].status = status;
            }
        }
    }
}

static void forget(struct process *p)
{
    if (p->out_path[0]) unlink(p->out_path);
    if (p->err_path[0]) unlink(p->err_path);
    memset(p, 0, sizeof *p);
}

static struct process *free_slot(void)
{
    struct process *oldest = NULL;
    for (int i = 0; i < MAX_PROCESSES; i++) {
        if (!processes[i].pid) return &processes[i];
        if (!processes[i].running && (!oldest || processes[i].started < oldest->started)) {
            oldest = &processes[i];
        }
    }
    if (oldest) forget(oldest); /* its status was never asked for */
    return oldest;
}

static int string_list(const struct jval *list, char **out, int max, int *count)
{
    *count = 0;
    if (!list) return 1;
    if (list->type != J_ARRAY) return 0;
    for (const struct jval *item = list->child; item; item = item->next) {
        if (item->type != J_STRING || *count >= max) return 0;
        out[(*count)++] = item->string;
    }
    return 1;
}

static void cmd_exec(const struct request *req)
{
    const struct jval *path = member(req->arguments, "path");
    const struct jval *capture = member(req->arguments, "capture-output");
    const struct jval *input = member(req->arguments, "input-data");
    char *argv[MAX_ARGS + 2];
    char *envp[MAX_ARGS + 1];
    int argc, envc;
    if (!path) {
        reply_error(req, "GenericError", "Parameter 'path' is missing");
        return;
    }
    if (path->type != J_STRING) {
        reply_error(req, "GenericError", "Invalid parameter type for 'path', expected: string");
        return;
    }
    if (!string_list(member(req->arguments, "arg"), argv + 1, MAX_ARGS, &argc)) {
        reply_error(req, "GenericError", "Invalid parameter type for 'arg', expected: array");
        return;
    }
    if (!string_list(member(req->arguments, "env"), envp, MAX_ARGS, &envc)) {
        reply_error(req, "GenericError", "Invalid parameter type for 'env', expected: array");
        return;
    }
    argv[0] = path->string;
    argv[argc + 1] = NULL;
    envp[envc] = NULL;
    int capture_out = 0, capture_err = 0, merged = 0;
    if (capture && capture->type == J_BOOL) {
        capture_out = capture_err = capture->boolean;
    } else if (capture && capture->type == J_STRING) {
        const char *mode = capture->string;
        if (strcmp(mode, "stdout") == 0) capture_out = 1;
        else if (strcmp(mode, "stderr") == 0) capture_err = 1;
        else if (strcmp(mode, "separated") == 0) capture_out = capture_err = 1;
        else if (strcmp(mode, "merged") == 0) capture_out = merged = 1;
        else if (strcmp(mode, "none") != 0) {
            reply_error(req, "GenericError", "Parameter 'capture-output' does not accept value");
            return;
        }
    } else if (capture && capture->type != J_NULL) {
        reply_error(req, "GenericError", "Invalid parameter type for 'capture-output'");
        return;
    }
    long input_len = 0;
    if (input && input->type == J_STRING) {
        input_len = base64_decode(input->string, input->string_len);
        if (input_len < 0) {
            reply_error(req, "GenericError", "Invalid parameter 'input-data'");
            return;
        }
    }
    struct process *slot = free_slot();
    if (!slot) {
        reply_error(req, "GenericError", "Guest agent command failed, error was 'too many processes'");
        return;
    }
    static unsigned serial;
    serial++;
    char in_path[PATH_MAX] = "";
    if (input_len > 0) {
        snprintf(in_path, sizeof in_path, "%s/in-%u", run_dir, serial);
        int fd = open(in_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            reply_errorf(req, "Guest agent command failed, error was '%s'", strerror(errno));
            return;
        }
        ssize_t written = write(fd, input->string, (size_t)input_len);
        close(fd);
        if (written != input_len) {
            unlink(in_path);
            reply_error(req, "GenericError", "Guest agent command failed, error was 'short write'");
            return;
        }
    }
    char out_path[PATH_MAX] = "", err_path[PATH_MAX] = "";
    if (capture_out) snprintf(out_path, sizeof out_path, "%s/out-%u", run_dir, serial);
    if (capture_err) snprintf(err_path, sizeof err_path, "%s/err-%u", run_dir, serial);

    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        reply_errorf(req, "Guest agent command failed, error was '%s'", strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(report[0]);
        close(report[1]);
        reply_errorf(req, "Guest agent command failed, error was '%s'", strerror(errno));
        return;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        int in = open(in_path[0] ? in_path : "/dev/null", O_RDONLY);
        int null_out = open("/dev/null", O_WRONLY);
        int out = out_path[0] ? open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600) : null_out;
        int err = merged ? out : err_path[0] ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0600)
                                             : null_out;
        if (in < 0 || out < 0 || err < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
            dup2(err, 2) < 0) {
            int e = errno;
            (void)!write(report[1], &e, sizeof e);
            _exit(127);
        }
        for (int fd = 3; fd < 1024; fd++) {
            if (fd != report[1]) close(fd);
        }
        if (envc > 0) environ = envp;
        execvp(argv[0], argv);
        int e = errno;
        (void)!write(report[1], &e, sizeof e);
        _exit(127);
    }
    close(report[1]);
    int child_errno = 0;
    ssize_t got;
    do {
        got = read(report[0], &child_errno, sizeof child_errno);
    } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (in_path[0]) unlink(in_path); /* the child has it open, or failed */
    if (got == (ssize_t)sizeof child_errno) {
        waitpid(pid, NULL, 0);
        if (out_path[0]) unlink(out_path);
        if (err_path[0]) unlink(err_path);
        reply_errorf(req, "Guest agent command failed, error was 'Failed to execute child "
                          "process \"%s\" (%s)'", argv[0], strerror(child_errno));
        return;
    }
    slot->pid = pid;
    slot->running = 1;
    slot->capture_out = capture_out;
    slot->capture_err = capture_err && !merged;
    slot->started = now_ms();
    strcpy(slot->out_path, out_path);
    strcpy(slot->err_path, merged ? "" : err_path);
    char value[64];
    snprintf(value, sizeof value, "{\"pid\": %d}", (int)pid);
    reply_return(req, value);
}

static void add_captured(struct buf *b, const char *name, const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    unsigned char *data = malloc(MAX_CAPTURE);
    size_t len = 0;
    ssize_t n;
    while (data && len < MAX_CAPTURE && (n = read(fd, data + len, MAX_CAPTURE - len)) > 0) {
        len += (size_t)n;
    }
    char extra;
    int truncated = data && len == MAX_CAPTURE && read(fd, &extra, 1) == 1;
    close(fd);
    if (data && len > 0) {
        buf_printf(b, ", \"%s-data\": ", name);
        buf_base64(b, data, len);
        if (truncated) buf_printf(b, ", \"%s-truncated\": true", name);
    }
    free(data);
}

static void cmd_exec_status(const struct request *req)
{
    const struct jval *pid = member(req->arguments, "pid");
    if (!pid) {
        reply_error(req, "GenericError", "Parameter 'pid' is missing");
        return;
    }
    if (pid->type != J_NUMBER || !pid->is_integer) {
        reply_error(req, "GenericError", "Invalid parameter type for 'pid', expected: integer");
        return;
    }
    reap_children();
    struct process *p = NULL;
    for (int i = 0; i < MAX_PROCESSES; i++) {
        if (processes[i].pid && processes[i].pid == pid->integer) p = &processes[i];
    }
    if (!p) {
        reply_error(req, "GenericError", "Invalid parameter 'pid'");
        return;
    }
    if (p->running) {
        reply_return(req, "{\"exited\": false}");
        return;
    }
    struct buf value = {0};
    buf_puts(&value, "{\"exited\": true");
    if (WIFEXITED(p->status)) {
        buf_printf(&value, ", \"exitcode\": %d", WEXITSTATUS(p->status));
    } else if (WIFSIGNALED(p->status)) {
        buf_printf(&value, ", \"signal\": %d", WTERMSIG(p->status));
    }
    if (p->capture_out) add_captured(&value, "out", p->out_path);
    if (p->capture_err) add_captured(&value, "err", p->err_path);
    buf_puts(&value, "}");
    if (value.failed) {
        reply_error(req, "GenericError", "Guest agent command failed, error was 'out of memory'");
    } else {
        reply_return(req, value.data);
        forget(p);
    }
    free(value.data);
}

/* ---------------------------------------------------------------- the other commands */

static void cmd_sync(const struct request *req, int delimited)
{
    const struct jval *id = member(req->arguments, "id");
    if (!id) {
        reply_error(req, "GenericError", "Parameter 'id' is missing");
        return;
    }
    if (id->type != J_NUMBER || !id->is_integer) {
        reply_error(req, "GenericError", "Invalid parameter type for 'id', expected: integer");
        return;
    }
    struct buf body = {0};
    buf_printf(&body, "{\"return\": %lld}", id->integer);
    if (!body.failed) send_reply(req, &body, delimited);
    free(body.data);
}

static void cmd_ping(const struct request *req)
{
    reply_return(req, "{}");
}

static void cmd_osinfo(const struct request *req)
{
    /* RtlGetVersion gives 10.0 build 20348 for Windows Server 2022; "version" comes from
     * qemu-ga's table (first build 20344: Server 2022), "pretty-name" from ProductName. */
    reply_return(req,
                 "{\"name\": \"Microsoft Windows\", \"kernel-release\": \"20348\", "
                 "\"version\": \"Microsoft Windows Server 2022\", \"variant\": \"server\", "
                 "\"pretty-name\": \"Windows Server 2022 Datacenter\", "
                 "\"version-id\": \"2022\", \"variant-id\": \"server\", "
                 "\"kernel-version\": \"10.0\", \"machine\": \"x86_64\", "
                 "\"id\": \"mswindows\"}");
}

static void cmd_unsupported(const struct request *req)
{
    reply_error(req, "GenericError", UNSUPPORTED);
}

static void cmd_info(const struct request *req);

struct command {
    const char *name;
    void (*run)(const struct request *req);
};

static void cmd_sync_plain(const struct request *req) { cmd_sync(req, 0); }
static void cmd_sync_delimited(const struct request *req) { cmd_sync(req, 1); }

static const struct command COMMANDS[] = {
    {"guest-sync-delimited", cmd_sync_delimited},
    {"guest-sync", cmd_sync_plain},
    {"guest-ping", cmd_ping},
    {"guest-info", cmd_info},
    {"guest-get-osinfo", cmd_osinfo},
    {"guest-get-load", cmd_get_load},
    {"guest-get-cpustats", cmd_unsupported},
    {"guest-get-diskstats", cmd_unsupported},
    {"guest-exec", cmd_exec},
    {"guest-exec-status", cmd_exec_status},
};

static void cmd_info(const struct request *req)
{
    struct buf value = {0};
    buf_puts(&value, "{\"version\": \"" AGENT_VERSION "\", \"supported_commands\": [");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++) {
        buf_printf(&value, "%s{\"enabled\": true, \"name\": \"%s\", \"success-response\": true}",
                   i ? ", " : "", COMMANDS[i].name);
    }
    buf_puts(&value, "]}");
    if (!value.failed) reply_return(req, value.data);
    free(value.data);
}

static void dispatch(const char *message, size_t len)
{
    arena_used = 0;
    struct parser ps = {.p = message, .end = message + len};
    struct jval *root = parse_value(&ps);
    if (root) {
        skip_space(&ps);
        if (ps.p != ps.end) {
            root = NULL;
            ps.error = "JSON parse error, trailing characters";
        }
    }
    if (!root) {
        reply_error(NULL, "GenericError", ps.error ? ps.error : "JSON parse error");
        return;
    }
    if (root->type != J_OBJECT) {
        reply_error(NULL, "GenericError", "QMP input must be a JSON object");
        return;
    }
    struct request req = {.id = member(root, "id"), .arguments = member(root, "arguments")};
    const struct jval *execute = member(root, "execute");
    if (!execute) {
        reply_error(&req, "GenericError", "QMP input lacks member 'execute'");
        return;
    }
    if (execute->type != J_STRING) {
        reply_error(&req, "GenericError", "QMP input member 'execute' must be a string");
        return;
    }
    if (req.arguments && req.arguments->type != J_OBJECT) {
        reply_error(&req, "GenericError", "QMP input member 'arguments' must be an object");
        return;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++) {
        if (strcmp(execute->string, COMMANDS[i].name) == 0) {
            COMMANDS[i].run(&req);
            return;
        }
    }
    struct buf desc = {0};
    buf_puts(&desc, "The command ");
    buf_add(&desc, execute->string, execute->string_len);
    buf_puts(&desc, " has not been found");
    reply_error(&req, "CommandNotFound", desc.failed ? "The command has not been found" : desc.data);
    free(desc.data);
}

/* ---------------------------------------------------------------- the input stream */

/* Splits the byte stream into JSON texts the way QEMU's JSON streamer does: a text ends when
 * its braces and brackets balance. 0xFF drops a partial text; stray bytes get an error. */
struct streamer {
    char *data;
    size_t len;
    int depth;
    int in_string, escaped;
    int overflow;
    int in_garbage;
    int skipping; /* after a nesting overflow: drop input up to the next line */
};

static void streamer_reset(struct streamer *s)
{
    s->len = 0;
    s->depth = 0;
    s->in_string = s->escaped = 0;
    s->overflow = 0;
}

static void streamer_feed(struct streamer *s, const unsigned char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = bytes[i];
        if (c == 0xff || c == 0xfe) {
            streamer_reset(s);
            s->in_garbage = s->skipping = 0;
            continue;
        }
        if (s->skipping) {
            s->skipping = c != '\n';
            continue;
        }
        if (s->depth == 0) {
            if (c == '{' || c == '[') {
                s->in_garbage = 0;
                s->len = 0;
                s->overflow = 0;
            } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
                s->in_garbage = 0;
                continue;
            } else {
                if (!s->in_garbage) {
                    s->in_garbage = 1;
                    reply_error(NULL, "GenericError", "JSON parse error, stray input");
                }
                continue;
            }
        }
        if (s->len < MAX_MESSAGE) {
            s->data[s->len++] = (char)c;
        } else {
            s->overflow = 1;
        }
        if (s->in_string) {
            if (s->escaped) s->escaped = 0;
            else if (c == '\\') s->escaped = 1;
            else if (c == '"') s->in_string = 0;
            continue;
        }
        if (c == '"') {
            s->in_string = 1;
        } else if (c == '{' || c == '[') {
            if (++s->depth > 1024) {
                reply_error(NULL, "GenericError", "JSON nesting depth limit exceeded");
                streamer_reset(s);
                s->skipping = 1;
            }
        } else if (c == '}' || c == ']') {
            if (--s->depth == 0) {
                if (s->overflow) {
                    reply_error(NULL, "GenericError", "JSON message too large");
                } else {
                    dispatch(s->data, s->len);
                }
                streamer_reset(s);
            }
        }
    }
}

/* ---------------------------------------------------------------- main */

static void usage(void)
{
    fprintf(stderr, "usage: qemu-ga -m virtio-serial -p PORT [-s PROC_STAT] [-t LOAD_PERIOD_MS]"
                    " [-r RUN_DIR]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *port = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "m:p:s:t:r:")) != -1) {
        switch (opt) {
        case 'm': break; /* only virtio-serial (or stdio with -p -) */
        case 'p': port = optarg; break;
        case 's': proc_stat_path = optarg; break;
        case 'r': run_dir = optarg; break;
        case 't':
            load_period_ms = strtol(optarg, NULL, 10);
            if (load_period_ms < 1) usage();
            break;
        default: usage();
        }
    }
    if (!port) usage();
    signal(SIGPIPE, SIG_IGN);
    arena = malloc(ARENA_SIZE);
    struct streamer s = {.data = malloc(MAX_MESSAGE)};
    unsigned char *chunk = malloc(65536);
    if (!arena || !s.data || !chunk) return 1;

    int stdio = strcmp(port, "-") == 0;
    int in_fd = 0;
    if (!stdio) {
        in_fd = open(port, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (in_fd < 0) {
            fprintf(stderr, "qemu-ga: cannot open %s: %s\n", port, strerror(errno));
            return 1;
        }
        out_fd = in_fd;
    }
    if (mkdir(run_dir, 0700) < 0 && errno != EEXIST) run_dir = "/tmp";
    for (;;) {
        reap_children();
        tick_load();
        int timeout = 1000;
        if (load_started) {
            long long until = next_sample_ms - now_ms();
            if (until < timeout) timeout = until < 0 ? 0 : (int)until;
        }
        struct pollfd pfd = {.fd = in_fd, .events = POLLIN};
        int ready = poll(&pfd, 1, timeout);
        if (ready < 0 && errno != EINTR) {
            usleep(100 * 1000);
            continue;
        }
        if (ready <= 0) continue;
        ssize_t n = read(in_fd, chunk, 65536);
        if (n > 0) {
            streamer_feed(&s, chunk, (size_t)n);
        } else if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            if (stdio) return 0;
            /* virtio-serial reads 0 while no host is connected: wait, as qemu-ga does */
            streamer_reset(&s);
            usleep(100 * 1000);
        }
    }
}
