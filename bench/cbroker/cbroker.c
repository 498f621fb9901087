/* compass-cbroker: a ceiling for compass-broker (bench/README.md, "A ceiling for the broker").
 *
 * The smallest broker that speaks compass's wire protocol (docs/protocol.md, spec/protocol.json)
 * well enough that the same producers and workers drive it and compass-broker alike: compass-bench's
 * raw producer and null workers, compass-worker, CompassClient and `compass submit`. One thread, one
 * zmq_poll loop over two ROUTER sockets (a frontend for producers, a backend for workers), one FIFO
 * of batches, per-worker credit returned as compass returns it to a worker that did not ask for
 * explicit credit (each RESULT or FAILED gives one back, CREDIT(n) grants n more, at most 1,024).
 *
 * It does what compass-broker does for every batch, with the same messages: SUBMIT -> ACCEPTED,
 * BATCH to a worker with credit, the worker's RESULT -> RESULT to the producer (id, attempt, stats
 * and payload frames forwarded without a copy), ACK -> forgotten. A SUBMIT of an id it holds is
 * ACCEPTED again (from the connection that submitted it) or REJECTED duplicate; a RESULT for a batch
 * not running on that worker is dropped. HELLO, STATUS and HEARTBEAT are answered, workers get a
 * HEARTBEAT every --heartbeat-ms. Socket options as compass-broker's: ROUTER_MANDATORY,
 * ROUTER_HANDOVER, send high-water marks 100,000 (frontend) and 10,000 (backend), receive 1,000,
 * ZMQ_MAXMSGSIZE, one I/O thread, and the same draining (rounds of up to 32 messages a socket).
 *
 * What it leaves out, all of which compass-broker does and pays for: sessions (a result goes to the
 * connection that submitted the batch; HELLO binds nothing; if that connection is gone the result
 * is dropped), re-delivery of unacknowledged results, more than one pool (--pool names the one it
 * accepts; READY's pool is not checked), priorities, deadlines, retries (a FAILED is forwarded at
 * once), failure detection (heartbeats are sent, never checked; a worker that vanishes or sends
 * READY again keeps its batches running forever), leases, CANCEL (REJECTED unknown_command),
 * PROGRESS (dropped), explicit credit (its WELCOME never says credit_mode, so workers fall back to
 * implicit credit, as docs/protocol.md says they must), draining on SIGTERM (it just dies), the
 * payload's JSON syntax check, every bound but ZMQ_MAXMSGSIZE (no busy refusals, memory grows with
 * the queue), the journal, CURVE, metrics and logging. A measuring stick, not a broker to run.
 *
 * Build: cc -O2 -o compass-cbroker cbroker.c -lzmq          (bench/run does this)
 * Run:   compass-cbroker [--frontend EP] [--backend EP] [--heartbeat-ms MS] [--pool NAME]
 *        prints "compass-cbroker listening frontend=EP backend=EP" (wildcard ports resolved).
 */
#include <zmq.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Frame 0 of every message, and the command bytes (docs/protocol.md; spec/protocol.json). */
static const uint8_t HDR[8] = {'c', 'o', 'm', 'p', 'a', 's', 's', 1};
enum {
    HELLO = 0x01, SUBMIT = 0x02, CANCEL = 0x03, ACK = 0x04, STATUS = 0x05, HEARTBEAT = 0x06,           /* producer -> */
    P_WELCOME = 0x81, ACCEPTED = 0x82, REJECTED = 0x83, P_RESULT = 0x85, P_FAILED = 0x86, P_STATUS = 0x87,
    P_HEARTBEAT = 0x88,                                                                                 /* -> producer */
    READY = 0x11, CREDIT = 0x12, PROGRESS = 0x13, W_RESULT = 0x14, W_FAILED = 0x15, W_HEARTBEAT = 0x16,
    BYE = 0x17,                                                                                         /* worker -> */
    W_WELCOME = 0x91, BATCH = 0x92, TO_W_HEARTBEAT = 0x94, DISCONNECT = 0x95,                           /* -> worker */
};
enum { MAX_FRAMES = 10, MAX_CREDIT = 1024, ROUNDS = 16, PER_ROUND = 32, LIVENESS = 3 };
static const size_t MAX_PAYLOAD = 64u << 20;

static void die(const char *what) { fprintf(stderr, "compass-cbroker: %s: %s\n", what, zmq_strerror(zmq_errno())); exit(1); }
static void *xmalloc(size_t n) { void *p = calloc(1, n); if (!p) { fputs("compass-cbroker: out of memory\n", stderr); exit(1); } return p; }
static uint64_t now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000; }

/* ---- a hash table of objects whose first two fields are their key (open addressing) ---------- */
typedef struct { uint8_t *key; size_t len; } keyed;
typedef struct { keyed **slots; size_t cap, n; } table;

static uint64_t fnv(const uint8_t *p, size_t n) { uint64_t h = 1469598103934665603ull; while (n--) { h ^= *p++; h *= 1099511628211ull; } return h; }
static keyed **slot(table *t, const uint8_t *k, size_t n) {
    size_t m = t->cap - 1, i = fnv(k, n) & m;
    for (;; i = (i + 1) & m) {
        keyed *e = t->slots[i];
        if (!e || (e->len == n && memcmp(e->key, k, n) == 0)) return &t->slots[i];
    }
}
static void *tget(table *t, const uint8_t *k, size_t n) { return t->cap ? *slot(t, k, n) : NULL; }
static void tput(table *t, keyed *e) {
    if (2 * (t->n + 1) > t->cap) { /* keep the load at most 1/2 */
        table old = *t;
        t->cap = old.cap ? old.cap * 2 : 1024;
        t->slots = xmalloc(t->cap * sizeof *t->slots);
        for (size_t i = 0; i < old.cap; i++) if (old.slots[i]) *slot(t, old.slots[i]->key, old.slots[i]->len) = old.slots[i];
        free(old.slots);
    }
    *slot(t, e->key, e->len) = e;
    t->n++;
}
static void tdel(table *t, keyed *e) { /* empty the slot, then re-place the rest of its cluster */
    size_t m = t->cap - 1, i = (size_t)(slot(t, e->key, e->len) - t->slots);
    t->slots[i] = NULL;
    t->n--;
    for (size_t j = (i + 1) & m; t->slots[j]; j = (j + 1) & m) {
        keyed *x = t->slots[j];
        t->slots[j] = NULL;
        *slot(t, x->key, x->len) = x;
    }
}

/* ---- batches, their FIFO, workers ------------------------------------------------------------ */
enum { QUEUED, RUNNING, DONE };
typedef struct batch {
    uint8_t *key; size_t len;          /* batch id (table key) */
    uint8_t rid[256]; size_t ridlen;   /* the producer connection that submitted it */
    int state, worker;                 /* worker: RUNNING on workers[worker] */
    zmq_msg_t meta, payload;           /* QUEUED: held until dispatched (then moved into the BATCH) */
} batch;

typedef struct { batch **b; size_t cap, head, n; } fifo;
static void fifo_push(fifo *q, batch *b) {
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 1024;
        batch **nb = xmalloc(cap * sizeof *nb);
        for (size_t i = 0; i < q->n; i++) nb[i] = q->b[(q->head + i) % q->cap];
        free(q->b);
        q->b = nb, q->cap = cap, q->head = 0;
    }
    q->b[(q->head + q->n++) % q->cap] = b;
}
static batch *fifo_pop(fifo *q) { batch *b = q->b[q->head]; q->head = (q->head + 1) % q->cap; q->n--; return b; }

typedef struct worker {
    uint8_t *key; size_t len;          /* routing id (table key) */
    int index, credit, ready_pos, draining, gone;
} worker;

static void *frontend, *backend;
static table batches, worker_ids;
static fifo queue;
static worker **workers, **ready; /* ready: the workers with credit > 0, dispatched to in turn */
static size_t nworkers, nready, turn;
static char broker_id[64], pool[65] = "default";
static int heartbeat_ms = 1000;
static uint64_t submitted, dispatched, completed, failed, stale, rejected;

static void set_credit(worker *w, long c) {
    if (c > MAX_CREDIT) c = MAX_CREDIT;
    if (c < 0 || w->draining || w->gone) c = 0;
    if (c > 0 && w->credit == 0) { w->ready_pos = (int)nready; ready[nready++] = w; }
    if (c == 0 && w->credit > 0) { worker *last = ready[--nready]; ready[w->ready_pos] = last; last->ready_pos = w->ready_pos; }
    w->credit = (int)c;
}

/* ---- sending: a message is a list of parts, bytes (copied) or received frames (moved) --------- */
typedef struct { const void *p; size_t n; zmq_msg_t *m; } part;
#define B(ptr, len) ((part){(ptr), (len), NULL})
#define S(str) ((part){(str), strlen(str), NULL})
#define M(msg) ((part){NULL, 0, (msg)})
static const uint8_t CMD[256] = {[P_WELCOME] = P_WELCOME, [ACCEPTED] = ACCEPTED, [REJECTED] = REJECTED, [P_RESULT] = P_RESULT,
    [P_FAILED] = P_FAILED, [P_STATUS] = P_STATUS, [P_HEARTBEAT] = P_HEARTBEAT, [W_WELCOME] = W_WELCOME, [BATCH] = BATCH,
    [TO_W_HEARTBEAT] = TO_W_HEARTBEAT, [DISCONNECT] = DISCONNECT};
#define C(cmd) B(&CMD[cmd], 1)
static const uint8_t ZERO4[4] = {0, 0, 0, 0}, ONE4[4] = {0, 0, 0, 1}; /* u32 0; attempt 1 */

/* Sends v[0..n) without blocking. Fails (nothing sent, no frame consumed) only on the routing-id
 * frame: the peer is gone (ROUTER_MANDATORY) or its queue is full. */
static int sendv(void *s, const part *v, int n) {
    for (int i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        int rc = v[i].m ? zmq_msg_send(v[i].m, s, flags) : zmq_send(s, v[i].p, v[i].n, flags);
        if (rc < 0) return -1;
    }
    return 0;
}
#define SEND(sock, ...) sendv((sock), (part[]){__VA_ARGS__}, (int)(sizeof((part[]){__VA_ARGS__}) / sizeof(part)))

static uint32_t u32(zmq_msg_t *m) {
    const uint8_t *p = zmq_msg_data(m);
    return zmq_msg_size(m) == 4 ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : UINT32_MAX;
}
#define DATA(m) ((uint8_t *)zmq_msg_data(m))
#define SIZE(m) zmq_msg_size(m)

static void reject(zmq_msg_t *rid, const uint8_t *id, size_t idlen, const char *code, const char *message) {
    rejected++;
    SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(REJECTED), B(id, idlen), S(code), S(message), B(ZERO4, 4));
}

/* Hands queued batches to workers with credit, in turn, oldest batch first. */
static void dispatch(void) {
    while (queue.n && nready) {
        worker *w = ready[turn++ % nready];
        batch *b = queue.b[queue.head];
        if (SEND(backend, B(w->key, w->len), B(HDR, 8), C(BATCH), B(b->key, b->len), B(ONE4, 4), M(&b->meta), M(&b->payload)) < 0) {
            w->gone = 1; /* unreachable or not reading: no more batches for it */
            set_credit(w, 0);
            continue;
        }
        fifo_pop(&queue);
        b->state = RUNNING, b->worker = w->index;
        dispatched++;
        set_credit(w, w->credit - 1);
    }
}

static void forget(batch *b) {
    tdel(&batches, (keyed *)b);
    if (b->state == QUEUED) { zmq_msg_close(&b->meta); zmq_msg_close(&b->payload); }
    free(b->key);
    free(b);
}

static void status(zmq_msg_t *rid) {
    size_t cap = 1024 + nworkers * 64, n = 0;
    char *j = xmalloc(cap);
    uint64_t running = dispatched - completed - failed;
    n += snprintf(j + n, cap - n, "{\"broker_id\":\"%s\",\"version\":\"compass-cbroker\",\"protocol_version\":1,"
                  "\"security\":\"plaintext\",\"accepting\":true,\"scheduler\":{\"pools\":[{\"name\":\"%s\",\"queued_batches\":%zu,"
                  "\"running_batches\":%llu,\"held_batches\":%zu,\"counters\":{\"submitted\":%llu,\"dispatched\":%llu,"
                  "\"completed\":%llu,\"failed\":%llu,\"stale_dropped\":%llu,\"rejected\":%llu}}]},\"workers\":[",
                  broker_id, pool, queue.n, (unsigned long long)running, batches.n, (unsigned long long)submitted,
                  (unsigned long long)dispatched, (unsigned long long)completed, (unsigned long long)failed,
                  (unsigned long long)stale, (unsigned long long)rejected);
    int first = 1;
    for (size_t i = 0; i < nworkers; i++) {
        if (workers[i]->gone) continue;
        n += snprintf(j + n, cap - n, "%s{\"id\":\"w-%d\",\"credit\":%d,\"draining\":%s}", first ? "" : ",", workers[i]->index,
                      workers[i]->credit, workers[i]->draining ? "true" : "false");
        first = 0;
    }
    n += snprintf(j + n, cap - n, "]}");
    SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(P_STATUS), B(j, n));
    free(j);
}

/* ---- producers ----------------------------------------------------------------------------- */
static void on_frontend(zmq_msg_t *f, int n) {
    zmq_msg_t *rid = &f[0];
    if (n < 3 || SIZE(&f[1]) != 8 || memcmp(DATA(&f[1]), HDR, 7) != 0 || SIZE(&f[2]) != 1) {
        reject(rid, NULL, 0, "bad_frame", "not a compass message");
        return;
    }
    if (DATA(&f[1])[7] != HDR[7]) { reject(rid, NULL, 0, "bad_version", "compass-cbroker speaks version 1"); return; }
    uint8_t cmd = DATA(&f[2])[0];
    char info[512];
    switch (cmd) {
    case HELLO:
        if (n != 4) break;
        snprintf(info, sizeof info, "{\"broker_id\":\"%s\",\"broker_version\":\"compass-cbroker\",\"heartbeat_ms\":%d,"
                 "\"liveness\":%d,\"pending_results\":0,\"max_payload_bytes\":%zu}", broker_id, heartbeat_ms, LIVENESS, MAX_PAYLOAD);
        SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(P_WELCOME), M(&f[3]), S(info));
        return;
    case SUBMIT: {
        if (n != 7 || SIZE(&f[3]) < 1 || SIZE(&f[3]) > 256 || SIZE(&f[5]) < 16 || SIZE(rid) > 255) break;
        const uint8_t *id = DATA(&f[3]);
        size_t idlen = SIZE(&f[3]);
        if (SIZE(&f[4]) != strlen(pool) || memcmp(DATA(&f[4]), pool, SIZE(&f[4])) != 0) {
            reject(rid, id, idlen, "unknown_pool", "compass-cbroker serves one pool (--pool)");
            return;
        }
        if (SIZE(&f[6]) > MAX_PAYLOAD) { reject(rid, id, idlen, "too_large", "payload over 64 MiB"); return; }
        batch *b = tget(&batches, id, idlen);
        if (b) { /* idempotent for the connection that submitted it */
            if (b->ridlen == SIZE(rid) && memcmp(b->rid, DATA(rid), b->ridlen) == 0)
                SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(ACCEPTED), M(&f[3]));
            else
                reject(rid, id, idlen, "duplicate", "the batch id belongs to another connection");
            return;
        }
        b = xmalloc(sizeof *b);
        b->key = xmalloc(idlen), memcpy(b->key, id, idlen), b->len = idlen;
        memcpy(b->rid, DATA(rid), SIZE(rid)), b->ridlen = SIZE(rid);
        b->state = QUEUED, b->worker = -1;
        zmq_msg_init(&b->meta), zmq_msg_move(&b->meta, &f[5]);
        zmq_msg_init(&b->payload), zmq_msg_move(&b->payload, &f[6]);
        tput(&batches, (keyed *)b);
        fifo_push(&queue, b);
        submitted++;
        SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(ACCEPTED), M(&f[3]));
        dispatch();
        return;
    }
    case ACK: {
        if (n != 4) break;
        batch *b = tget(&batches, DATA(&f[3]), SIZE(&f[3]));
        if (b && b->state == DONE && b->ridlen == SIZE(rid) && memcmp(b->rid, DATA(rid), b->ridlen) == 0) forget(b);
        return;
    }
    case STATUS: status(rid); return;
    case HEARTBEAT: SEND(frontend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(P_HEARTBEAT), S(broker_id)); return;
    case CANCEL:
        if (n != 4) break;
        reject(rid, DATA(&f[3]), SIZE(&f[3]), "unknown_command", "compass-cbroker does not cancel");
        return;
    default: reject(rid, NULL, 0, "unknown_command", "unknown command"); return;
    }
    reject(rid, NULL, 0, "bad_frame", "wrong frame count or field size");
}

/* ---- workers ------------------------------------------------------------------------------- */
/* The "credit" of READY's capabilities JSON; -1 if absent or negative. */
static long ready_credit(zmq_msg_t *m) {
    size_t n = SIZE(m);
    char *j = xmalloc(n + 1);
    memcpy(j, DATA(m), n);
    char *p = strstr(j, "\"credit\"");
    long c = -1;
    if (p) {
        p += 8;
        while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (*p >= '0' && *p <= '9') c = strtol(p, NULL, 10);
    }
    free(j);
    return c;
}

/* A worker's RESULT or FAILED: the batch, if it is running on `w` in attempt 1; else NULL (stale). */
static batch *answered(worker *w, zmq_msg_t *id, zmq_msg_t *attempt) {
    batch *b = tget(&batches, DATA(id), SIZE(id));
    if (!b || b->state != RUNNING || b->worker != w->index || u32(attempt) != 1) { stale++; return NULL; }
    b->state = DONE;
    set_credit(w, w->credit + 1); /* implicit credit: each answer returns one */
    return b;
}

static void on_backend(zmq_msg_t *f, int n) {
    zmq_msg_t *rid = &f[0];
    if (n < 3 || SIZE(&f[1]) != 8 || memcmp(DATA(&f[1]), HDR, 8) != 0 || SIZE(&f[2]) != 1) return;
    uint8_t cmd = DATA(&f[2])[0];
    worker *w = tget(&worker_ids, DATA(rid), SIZE(rid));
    if (cmd == READY && n == 4) {
        long credit = ready_credit(&f[3]);
        if (credit < 0) { SEND(backend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(DISCONNECT), S("bad_frame: no credit")); return; }
        if (!w) {
            w = xmalloc(sizeof *w);
            w->key = xmalloc(SIZE(rid)), memcpy(w->key, DATA(rid), SIZE(rid)), w->len = SIZE(rid);
            w->index = (int)nworkers;
            workers = realloc(workers, (nworkers + 1) * sizeof *workers);
            ready = realloc(ready, (nworkers + 1) * sizeof *ready);
            if (!workers || !ready) die("realloc");
            workers[nworkers++] = w;
            tput(&worker_ids, (keyed *)w);
        }
        w->draining = 0, w->gone = 0;
        char settings[128];
        snprintf(settings, sizeof settings, "{\"worker_id\":\"w-%d\",\"heartbeat_ms\":%d,\"liveness\":%d}", w->index, heartbeat_ms, LIVENESS);
        SEND(backend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(W_WELCOME), S(settings));
        set_credit(w, credit);
        dispatch();
        return;
    }
    if (!w) { SEND(backend, B(DATA(rid), SIZE(rid)), B(HDR, 8), C(DISCONNECT), S("unknown worker: send READY")); return; }
    batch *b;
    switch (cmd) {
    case CREDIT:
        if (n == 4 && SIZE(&f[3]) == 4) { set_credit(w, (long)w->credit + (long)u32(&f[3])); dispatch(); }
        return;
    case W_RESULT: /* [id, attempt, stats, payload] -> RESULT [id, attempts, stats, payload] */
        if (n != 7 || !(b = answered(w, &f[3], &f[4]))) return;
        completed++;
        if (SEND(frontend, B(b->rid, b->ridlen), B(HDR, 8), C(P_RESULT), M(&f[3]), M(&f[4]), M(&f[5]), M(&f[6])) < 0) forget(b);
        dispatch();
        return;
    case W_FAILED: /* [id, attempt, code, retryable, message, partial] -> FAILED [id, attempts, code, message, partial] */
        if (n != 9 || !(b = answered(w, &f[3], &f[4]))) return;
        failed++;
        if (SEND(frontend, B(b->rid, b->ridlen), B(HDR, 8), C(P_FAILED), M(&f[3]), M(&f[4]), M(&f[5]), M(&f[7]), M(&f[8])) < 0) forget(b);
        dispatch();
        return;
    case BYE: w->draining = 1; set_credit(w, 0); return;
    default: return; /* HEARTBEAT, PROGRESS */
    }
}

/* ---- the loop ------------------------------------------------------------------------------ */
/* Handles up to `limit` waiting messages of a socket; returns whether it may hold more. */
static int drain(void *s, int limit, void (*handle)(zmq_msg_t *, int)) {
    zmq_msg_t f[MAX_FRAMES], extra;
    for (int k = 0; k < limit; k++) {
        int n = 0, more = 1;
        while (more) {
            zmq_msg_t *m = n < MAX_FRAMES ? &f[n] : &extra;
            zmq_msg_init(m);
            if (zmq_msg_recv(m, s, ZMQ_DONTWAIT) < 0) {
                zmq_msg_close(m);
                if (zmq_errno() != EAGAIN) die("zmq_msg_recv");
                return 0;
            }
            more = zmq_msg_more(m);
            if (n >= MAX_FRAMES) zmq_msg_close(m);
            n++;
        }
        if (n <= MAX_FRAMES) handle(f, n);
        for (int i = 0; i < n && i < MAX_FRAMES; i++) zmq_msg_close(&f[i]);
    }
    return 1;
}

static void *router(void *ctx, const char *endpoint, int sndhwm, char *bound, size_t boundlen) {
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    int one = 1, rcvhwm = 1000, linger = 1000;
    int64_t maxmsg = (int64_t)MAX_PAYLOAD + (1 << 20);
    if (!s || zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof one) || zmq_setsockopt(s, ZMQ_ROUTER_HANDOVER, &one, sizeof one)
        || zmq_setsockopt(s, ZMQ_SNDHWM, &sndhwm, sizeof sndhwm) || zmq_setsockopt(s, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm)
        || zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) || zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger))
        die("socket");
    if (zmq_bind(s, endpoint)) die(endpoint);
    if (zmq_getsockopt(s, ZMQ_LAST_ENDPOINT, bound, &boundlen)) die("ZMQ_LAST_ENDPOINT");
    return s;
}

int main(int argc, char **argv) {
    const char *fe = "tcp://127.0.0.1:5555", *be = "tcp://127.0.0.1:5556";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--frontend") && v) fe = v, i++;
        else if (!strcmp(a, "--backend") && v) be = v, i++;
        else if (!strcmp(a, "--heartbeat-ms") && v) heartbeat_ms = atoi(v) > 0 ? atoi(v) : 1000, i++;
        else if (!strcmp(a, "--pool") && v && strlen(v) >= 1 && strlen(v) <= 64) strcpy(pool, v), i++;
        else {
            fprintf(stderr, "usage: compass-cbroker [--frontend EP] [--backend EP] [--heartbeat-ms MS] [--pool NAME]\n");
            return 2;
        }
    }
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    snprintf(broker_id, sizeof broker_id, "cbroker-%d-%08lx", (int)getpid(), (unsigned long)(t.tv_nsec ^ (t.tv_sec << 20)) & 0xffffffffUL);
    void *ctx = zmq_ctx_new();
    if (!ctx || zmq_ctx_set(ctx, ZMQ_IO_THREADS, 1)) die("zmq_ctx_new");
    char fbound[256], bbound[256];
    frontend = router(ctx, fe, 100000, fbound, sizeof fbound);
    backend = router(ctx, be, 10000, bbound, sizeof bbound);
    printf("compass-cbroker listening frontend=%s backend=%s\n", fbound, bbound);
    fflush(stdout);
    zmq_pollitem_t items[2] = {{frontend, 0, ZMQ_POLLIN, 0}, {backend, 0, ZMQ_POLLIN, 0}};
    uint64_t next_heartbeat = now_ms() + heartbeat_ms;
    for (;;) {
        uint64_t now = now_ms();
        if (zmq_poll(items, 2, next_heartbeat > now ? (long)(next_heartbeat - now) : 0) < 0 && zmq_errno() != EINTR) die("zmq_poll");
        int fo = items[0].revents & ZMQ_POLLIN, bo = items[1].revents & ZMQ_POLLIN;
        for (int r = 0; r < ROUNDS && (fo || bo); r++) { /* alternate, so neither side holds back the other */
            if (fo) fo = drain(frontend, PER_ROUND, on_frontend);
            if (bo) bo = drain(backend, PER_ROUND, on_backend);
        }
        if (now_ms() >= next_heartbeat) {
            for (size_t i = 0; i < nworkers; i++) {
                worker *w = workers[i];
                if (!w->gone && SEND(backend, B(w->key, w->len), B(HDR, 8), C(TO_W_HEARTBEAT)) < 0 && zmq_errno() == EHOSTUNREACH) {
                    w->gone = 1; /* its connection is gone: no more batches for it (its running ones are lost) */
                    set_credit(w, 0);
                }
            }
            next_heartbeat = now_ms() + heartbeat_ms;
        }
    }
}
