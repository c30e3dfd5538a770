/*
 * fakepg: a minimal PostgreSQL server that answers at once, for the proxy-bound scenario of
 * bench/bench.py. With it behind them, the proxies' own cost decides the throughput.
 *
 *     gcc -O2 -pthread -o fakepg bench/fakepg.c && ./fakepg PORT [THREADS]
 *
 * run.sh compiles it at bench time. THREADS bare epoll loops (default 1), each with its own
 * SO_REUSEPORT listening socket on 127.0.0.1:PORT. No storage, no auth, no errors:
 *
 * - SSLRequest / GSSENCRequest: 'N'; CancelRequest: closed.
 * - Startup: AuthenticationOk (any user, no password), ParameterStatus (the usual reported
 *   parameters, and the startup packet's own), BackendKeyData, ReadyForQuery.
 * - Query: for each ';'-separated statement, `SET name = value` / `SET name TO value` answers
 *   ParameterStatus + CommandComplete SET; `RESET`/`DISCARD` CommandComplete; a
 *   `set_config('name', 'value', ...)` reports each parameter it sets; `SHOW max_connections`
 *   answers 200, `pg_is_in_recovery()` f, the session-settings baseline no rows, BEGIN / COMMIT /
 *   ROLLBACK / END their tags (and the transaction status); anything else one row, one int4
 *   column, "1". Then ReadyForQuery.
 * - Parse '1', Bind '2', Describe (statement: ParameterDescription with as many int4 parameters
 *   as the last Parse had $n, then RowDescription; portal: RowDescription), Execute (DataRow,
 *   CommandComplete), Close '3', Sync ReadyForQuery, Flush nothing, Terminate closes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd;
    int started;      /* startup done */
    char txn;         /* 'I' or 'T' */
    int nparams;      /* $n in the last Parse */
    buf_t in, out;
    int want_out;     /* EPOLLOUT armed */
} conn_t;

static int port;

static void reserve(buf_t *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    b->p = realloc(b->p, cap);
    if (!b->p) { perror("realloc"); exit(1); }
    b->cap = cap;
}

static void put(buf_t *b, const void *data, size_t n) {
    reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put32(buf_t *b, uint32_t v) { v = htonl(v); put(b, &v, 4); }
static void put16(buf_t *b, uint16_t v) { v = htons(v); put(b, &v, 2); }
static void putstr(buf_t *b, const char *s) { put(b, s, strlen(s) + 1); }

/* Start a message of type t; returns the offset of its length, for end_msg. */
static size_t begin_msg(buf_t *b, char t) {
    put(b, &t, 1);
    size_t at = b->len;
    put32(b, 0);
    return at;
}

static void end_msg(buf_t *b, size_t at) {
    uint32_t n = htonl((uint32_t)(b->len - at));
    memcpy(b->p + at, &n, 4);
}

static void param_status(buf_t *b, const char *name, const char *value) {
    size_t at = begin_msg(b, 'S');
    putstr(b, name);
    putstr(b, value);
    end_msg(b, at);
}

static void command_complete(buf_t *b, const char *tag) {
    size_t at = begin_msg(b, 'C');
    putstr(b, tag);
    end_msg(b, at);
}

static void ready(conn_t *c) {
    size_t at = begin_msg(&c->out, 'Z');
    put(&c->out, &c->txn, 1);
    end_msg(&c->out, at);
}

static void row_description(buf_t *b, const char *column, uint32_t type_oid) {
    size_t at = begin_msg(b, 'T');
    put16(b, 1);
    putstr(b, column);
    put32(b, 0); put16(b, 0);               /* table oid, column */
    put32(b, type_oid); put16(b, type_oid == 23 ? 4 : (uint16_t)-1);
    put32(b, (uint32_t)-1); put16(b, 0);    /* typmod, text format */
    end_msg(b, at);
}

static void data_row(buf_t *b, const char *value) {
    size_t at = begin_msg(b, 'D');
    put16(b, 1);
    put32(b, (uint32_t)strlen(value));
    put(b, value, strlen(value));
    end_msg(b, at);
}

/* A one-row, one-column answer. */
static void one_row(buf_t *b, const char *column, uint32_t type_oid, const char *value) {
    row_description(b, column, type_oid);
    data_row(b, value);
    command_complete(b, "SELECT 1");
}

static int starts_with(const char *s, const char *prefix) {
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* Copy the next SQL token (identifier, or quoted literal without its quotes) into out. */
static const char *token(const char *s, char *out, size_t cap) {
    size_t n = 0;
    while (*s && isspace((unsigned char)*s)) s++;
    if (*s == '\'' || *s == '"') {
        char q = *s++;
        while (*s && !(*s == q && s[1] != q)) {
            if (*s == q) s++;   /* doubled quote */
            if (n + 1 < cap) out[n++] = *s;
            s++;
        }
        if (*s) s++;
    } else {
        while (*s && !isspace((unsigned char)*s) && *s != '=' && *s != ',' && *s != ';' && *s != ')') {
            if (n + 1 < cap) out[n++] = *s;
            s++;
        }
    }
    out[n] = 0;
    return s;
}

/* One statement of a simple Query (not NUL-terminated at the ';': `end` is its end). */
static void statement(conn_t *c, const char *s, const char *end) {
    char name[128], value[256];
    buf_t *b = &c->out;
    while (s < end && isspace((unsigned char)*s)) s++;
    if (s >= end) return;
    if (starts_with(s, "SET ") && !starts_with(s, "SET LOCAL") && !starts_with(s, "SET SESSION AUTH")) {
        const char *p = s + 4;
        if (starts_with(p, "SESSION ")) p += 8;
        p = token(p, name, sizeof name);
        while (*p && (isspace((unsigned char)*p) || *p == '=')) p++;
        if (starts_with(p, "TO ")) p += 3;
        token(p, value, sizeof value);
        param_status(b, name, value);
        command_complete(b, "SET");
    } else if (starts_with(s, "RESET") || starts_with(s, "DISCARD") || starts_with(s, "DEALLOCATE")
               || starts_with(s, "CLOSE") || starts_with(s, "UNLISTEN")) {
        char tag[32];
        token(s, tag, sizeof tag);
        for (char *t = tag; *t; t++) *t = (char)toupper((unsigned char)*t);
        if (starts_with(tag, "DISCARD")) strcpy(tag, "DISCARD ALL");
        if (starts_with(tag, "CLOSE")) strcpy(tag, "CLOSE CURSOR ALL");
        if (starts_with(tag, "DEALLOCATE")) strcpy(tag, "DEALLOCATE ALL");
        command_complete(b, tag);
    } else if (starts_with(s, "BEGIN") || starts_with(s, "START TRANSACTION")) {
        c->txn = 'T';
        command_complete(b, "BEGIN");
    } else if (starts_with(s, "COMMIT") || starts_with(s, "END")) {
        c->txn = 'I';
        command_complete(b, "COMMIT");
    } else if (starts_with(s, "ROLLBACK") || starts_with(s, "ABORT")) {
        c->txn = 'I';
        command_complete(b, "ROLLBACK");
    } else if (starts_with(s, "SHOW ")) {
        token(s + 5, name, sizeof name);
        one_row(b, name, 25, strcasecmp(name, "max_connections") == 0 ? "200" : "on");
    } else if (memmem(s, (size_t)(end - s), "pg_is_in_recovery", 17)) {
        one_row(b, "pg_is_in_recovery", 16, "f");
    } else if (memmem(s, (size_t)(end - s), "pg_settings", 11)) {
        row_description(b, "name", 25);        /* the baseline: no session settings */
        command_complete(b, "SELECT 0");
    } else {
        /* set_config('name', 'value', false): report what it sets, as PostgreSQL does. */
        const char *p = s;
        while ((p = memmem(p, (size_t)(end - p), "set_config(", 11)) != NULL) {
            p = token(p + 11, name, sizeof name);
            while (*p == ',' || isspace((unsigned char)*p)) p++;
            p = token(p, value, sizeof value);
            param_status(b, name, value);
        }
        one_row(b, "?column?", 23, "1");
    }
}

static void simple_query(conn_t *c, const char *sql, size_t n) {
    const char *end = sql + n, *s = sql;
    while (s < end && *s) {
        const char *semi = memchr(s, ';', (size_t)(end - s));
        const char *stop = semi ? semi : end;
        statement(c, s, stop);
        s = semi ? semi + 1 : end;
    }
    ready(c);
}

static int count_params(const char *sql, size_t n) {
    int max = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (sql[i] == '$' && isdigit((unsigned char)sql[i + 1])) {
            int v = atoi(sql + i + 1);
            if (v > max) max = v;
        }
    }
    return max;
}

static void startup(conn_t *c, const char *body, size_t n) {
    buf_t *b = &c->out;
    static const char *defaults[][2] = {
        {"server_version", "15.0"}, {"server_encoding", "UTF8"}, {"client_encoding", "UTF8"},
        {"DateStyle", "ISO, MDY"}, {"IntervalStyle", "postgres"}, {"TimeZone", "UTC"},
        {"integer_datetimes", "on"}, {"standard_conforming_strings", "on"},
        {"is_superuser", "off"}, {"default_transaction_read_only", "off"},
        {"in_hot_standby", "off"}, {"application_name", ""},
    };
    size_t at = begin_msg(b, 'R');
    put32(b, 0);                                 /* AuthenticationOk */
    end_msg(b, at);
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++) {
        const char *given = NULL;                /* the startup packet's value wins */
        for (const char *p = body + 4; p < body + n && *p;) {
            const char *k = p, *v = p + strlen(p) + 1;
            if (v >= body + n) break;
            if (strcasecmp(k, defaults[i][0]) == 0) given = v;
            p = v + strlen(v) + 1;
        }
        param_status(b, defaults[i][0], given ? given : defaults[i][1]);
    }
    for (const char *p = body + 4; p < body + n && *p;) {
        const char *k = p, *v = p + strlen(p) + 1;
        if (v >= body + n) break;
        if (strcmp(k, "user") == 0) param_status(b, "session_authorization", v);
        p = v + strlen(v) + 1;
    }
    at = begin_msg(b, 'K');
    put32(b, (uint32_t)getpid());
    put32(b, (uint32_t)rand());
    end_msg(b, at);
    c->started = 1;
    ready(c);
}

/* Handle every complete message in c->in; returns 0 to close the connection. */
static int process(conn_t *c) {
    size_t off = 0;
    int keep = 1;
    while (keep) {
        char *m = c->in.p + off;
        size_t avail = c->in.len - off;
        if (!c->started) {
            if (avail < 8) break;
            uint32_t len = ntohl(*(uint32_t *)m), code = ntohl(*(uint32_t *)(m + 4));
            if (len < 8 || len > 10000) return 0;
            if (avail < len) break;
            if (code == 80877103 || code == 80877104) put(&c->out, "N", 1);   /* SSL, GSSENC */
            else if (code == 80877102) return 0;                              /* cancel */
            else startup(c, m + 4, len - 4);
            off += len;
            continue;
        }
        if (avail < 5) break;
        uint32_t len = ntohl(*(uint32_t *)(m + 1));
        if (len < 4) return 0;
        if (avail < len + 1) break;
        char *body = m + 5;
        size_t n = len - 4;
        buf_t *b = &c->out;
        size_t at;
        switch (m[0]) {
        case 'Q': simple_query(c, body, n); break;
        case 'P': {   /* name\0 query\0 ... */
            const char *q = body + strlen(body) + 1;
            c->nparams = count_params(q, strnlen(q, n - (size_t)(q - body)));
            put(b, "1\0\0\0\4", 5);
            break;
        }
        case 'B': put(b, "2\0\0\0\4", 5); break;
        case 'D':
            if (body[0] == 'S') {
                at = begin_msg(b, 't');
                put16(b, (uint16_t)c->nparams);
                for (int i = 0; i < c->nparams; i++) put32(b, 23);
                end_msg(b, at);
            }
            row_description(b, "?column?", 23);
            break;
        case 'E': data_row(b, "1"); command_complete(b, "SELECT 1"); break;
        case 'C': put(b, "3\0\0\0\4", 5); break;
        case 'S': ready(c); break;
        case 'H': break;
        case 'X': keep = 0; break;
        default: return 0;
        }
        off += len + 1;
    }
    memmove(c->in.p, c->in.p + off, c->in.len - off);
    c->in.len -= off;
    return keep;
}

static void closeconn(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.p);
    free(c->out.p);
    free(c);
}

/* Write what is pending; arm or disarm EPOLLOUT. Returns 0 on a broken connection. */
static int flush_out(int ep, conn_t *c) {
    size_t done = 0;
    while (done < c->out.len) {
        ssize_t w = write(c->fd, c->out.p + done, c->out.len - done);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return 0;
        }
        done += (size_t)w;
    }
    memmove(c->out.p, c->out.p + done, c->out.len - done);
    c->out.len -= done;
    int want = c->out.len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 1;
}

static void *loop(void *arg) {
    (void)arg;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) {
        perror("fakepg: bind/listen");
        exit(1);
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (!c) {   /* the listening socket */
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->txn = 'I';
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            int ok = 1;
            if (events[i].events & EPOLLIN) {
                for (;;) {
                    reserve(&c->in, 16384);
                    ssize_t r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
                    if (r > 0) {
                        c->in.len += (size_t)r;
                        if (c->in.len < c->in.cap) break;   /* drained (short read) */
                        continue;
                    }
                    if (r < 0 && errno == EINTR) continue;
                    if (r < 0 && errno == EAGAIN) break;
                    ok = 0;   /* EOF or error */
                    break;
                }
                if (c->in.len && !process(c)) ok = 0;
            } else if (events[i].events & (EPOLLHUP | EPOLLERR)) {
                ok = 0;
            }
            if (c->out.len && !flush_out(ep, c)) ok = 0;
            else if (!c->out.len && c->want_out) flush_out(ep, c);
            if (!ok) closeconn(ep, c);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: fakepg PORT [THREADS]\n");
        return 2;
    }
    port = atoi(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    if (threads < 1) threads = 1;
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        pthread_create(&t, NULL, loop, NULL);
    }
    loop(NULL);
    return 0;
}
