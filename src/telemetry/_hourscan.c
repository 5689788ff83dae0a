/* An hour's raw lake files aggregated in one pass of C: the per-vehicle statistics that
 * `aggregate_lean` computes (non-mergeable, see SignalStats.final), for the lines the worker
 * writes. Anything outside what this scanner settles for sure makes it answer None, and the
 * Python paths, which own every rule, take the hour over unchanged.
 *
 * Accepted: lines `{"reading_id":s,"vehicle_id":s,"ts":t,"received_at":t,"signals":{...}}`,
 * keys in any order, no whitespace, empty lines between them; ids and signal names of printable
 * ASCII without escapes; signal values: ints within int64, finite floats, true/false and ASCII
 * strings (those two skipped: not numeric statistics); timestamps
 * `YYYY-MM-DDTHH:MM:SS[.f{1,6}]` with `Z` or `+HH:MM`/`-HH:MM` (only the instant counts). Duplicates by (vehicle_id, reading_id): the copy received
 * first wins; copies received at that same instant count once when their bytes are equal, else
 * None (Python settles those by their encodings). A sum that leaves the float range: None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ small growable arrays */

typedef struct {
    void *data;
    size_t len, cap, item;
} Vec;

static void
vec_init(Vec *v, size_t item)
{
    v->data = NULL;
    v->len = v->cap = 0;
    v->item = item;
}

static void *
vec_push(Vec *v)
{
    if (v->len == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 256;
        void *d = PyMem_Realloc(v->data, cap * v->item);
        if (d == NULL) {
            return NULL;
        }
        v->data = d;
        v->cap = cap;
    }
    return (char *)v->data + v->item * v->len++;
}

#define VEC_AT(v, type, i) (((type *)(v).data)[i])

/* The big arrays of one call kept for the next (one hour after another in a process): fresh
 * memory costs a page fault a page, more than the scan of what is written in it. Bounded; and
 * a call made while another runs (a finalizer during the build) allocates its own. */
#define KEEP_BYTES ((size_t)256 << 20)

static struct {
    int busy;
    Vec lines, vals;
} kept;

static void
vec_take(Vec *v, Vec *from, size_t item)
{
    if (!kept.busy && from->data != NULL && from->item == item) {
        *v = *from;
        v->len = 0;
        vec_init(from, item);
    }
    else {
        vec_init(v, item);
    }
}

static void
vec_keep(Vec *v, Vec *into)
{
    if (!kept.busy && into->data == NULL && v->cap * v->item <= KEEP_BYTES) {
        *into = *v;
    }
    else {
        PyMem_Free(v->data);
    }
    vec_init(v, v->item);
}

/* ------------------------------------------------------------------ hashing */

static inline uint64_t
mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static inline uint64_t
load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static inline uint64_t
load4(const char *p)
{
    uint32_t w;
    memcpy(&w, p, 4);
    return w;
}

static uint64_t
hash_bytes(const char *p, size_t n, uint64_t seed)
{
    uint64_t h = seed ^ (n * 0x9e3779b97f4a7c15ULL);
    size_t len = n;
    while (n > 8) {
        h = (h ^ load8(p)) * 0x100000001b3ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w;
    if (len >= 8) {
        w = load8(p + n - 8);  /* the last 8 bytes, overlapping what was hashed */
    }
    else if (n >= 4) {
        w = load4(p) | (load4(p + n - 4) << 32);
    }
    else {
        w = 0;
        for (size_t i = 0; i < n; i++) {
            w = (w << 8) | (unsigned char)p[i];
        }
    }
    h = (h ^ w) * 0x100000001b3ULL;
    return mix(h);
}

/* A string of the input (a pointer into a blob) with its hash. */
typedef struct {
    const char *p;
    uint32_t n;
    uint64_t h;
} Key;

/* Open addressing: slots hold an index + 1 into `keys` (0: empty). */
typedef struct {
    uint32_t *slots;
    size_t mask;
    Vec keys;   /* Key */
} Intern;

static int
intern_init(Intern *t)
{
    t->mask = 1023;
    t->slots = PyMem_Calloc(t->mask + 1, sizeof(uint32_t));
    vec_init(&t->keys, sizeof(Key));
    return t->slots ? 0 : -1;
}

static void
intern_free(Intern *t)
{
    PyMem_Free(t->slots);
    PyMem_Free(t->keys.data);
}

static int
intern_grow(Intern *t)
{
    size_t mask = t->mask * 2 + 1;
    uint32_t *slots = PyMem_Calloc(mask + 1, sizeof(uint32_t));
    if (slots == NULL) {
        return -1;
    }
    for (size_t i = 0; i < t->keys.len; i++) {
        size_t s = VEC_AT(t->keys, Key, i).h & mask;
        while (slots[s]) {
            s = (s + 1) & mask;
        }
        slots[s] = (uint32_t)(i + 1);
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = mask;
    return 0;
}

/* The index of the string, added when new; -1 on memory failure. */
static Py_ssize_t
intern(Intern *t, const char *p, uint32_t n)
{
    uint64_t h = hash_bytes(p, n, 0x51ed270b27cULL);
    size_t s = h & t->mask;
    for (;;) {
        uint32_t e = t->slots[s];
        if (e == 0) {
            break;
        }
        Key *k = &VEC_AT(t->keys, Key, e - 1);
        if (k->h == h && k->n == n && memcmp(k->p, p, n) == 0) {
            return e - 1;
        }
        s = (s + 1) & t->mask;
    }
    if (t->keys.len >= UINT32_MAX - 1) {
        return -1;
    }
    Key *k = vec_push(&t->keys);
    if (k == NULL) {
        return -1;
    }
    k->p = p;
    k->n = n;
    k->h = h;
    t->slots[s] = (uint32_t)t->keys.len;
    if (t->keys.len * 2 > t->mask && intern_grow(t) < 0) {
        return -1;
    }
    return (Py_ssize_t)t->keys.len - 1;
}

/* ------------------------------------------------------------------ the parsed lines */

typedef struct {
    const char *line;   /* the line's bytes, for ties */
    const char *rid;
    size_t line_len;
    int64_t ts, received;
    size_t vals;        /* first value in the value array */
    uint32_t nvals;
    uint32_t rid_len;
    uint32_t vehicle;
    uint8_t keep;
    uint8_t tied;       /* a copy received at this one's instant has other bytes */
} Line;

typedef struct {
    uint32_t name;
    uint32_t is_float;
    union {
        double d;
        int64_t i;
    } v;
} Val;

/* ------------------------------------------------------------------ scanning */

typedef struct {
    const char *end;
    Intern vehicles, names;
    Vec lines;          /* Line */
    Vec vals;           /* Val */
    Vec hint;           /* uint32: name index seen last at each position of `signals` */
    Vec stamp;          /* uint32 per name: the last line that had it */
    uint32_t line_no;
    /* Only the vehicles of one part (a hash of the id modulo `parts`) are aggregated: parts
     * share no identity, so processes can take one each and their results only add up. */
    uint64_t part, parts;
    Vec mine;           /* uint8 per vehicle: of this part */
} Scan;

#define FAIL NULL

/* Bytes that may stand in a string as they are: printable ASCII but '"' and '\\'. */
static unsigned char PLAIN[256];

static void
init_tables(void)
{
    for (int c = 0x20; c < 0x7f; c++) {
        PLAIN[c] = c != '"' && c != '\\';
    }
}

/* A string of printable ASCII without escapes; p is after the opening quote. */
static inline const char *
plain_string(const char *p, const char *end, uint32_t *len)
{
    const char *s = p;
    while (p < end && PLAIN[(unsigned char)*p]) {
        p++;
    }
    if (p >= end || *p != '"' || p - s > 1000000) {
        return FAIL;
    }
    *len = (uint32_t)(p - s);
    return p + 1;
}

static inline int
is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* A string value, skipped: escapes allowed (not \u of a surrogate), ASCII only. */
static const char *
skip_string(const char *p, const char *end)
{
    while (p < end) {
        unsigned char c = (unsigned char)*p++;
        if (PLAIN[c]) {
            continue;
        }
        if (c == '"') {
            return p;
        }
        if (c < 0x20 || c >= 0x7f) {
            return FAIL;
        }
        if (c == '\\') {
            if (p >= end) {
                return FAIL;
            }
            c = (unsigned char)*p++;
            if (c == 'u') {
                if (end - p < 4 || !is_hex(p[0]) || !is_hex(p[1]) || !is_hex(p[2])
                    || !is_hex(p[3])) {
                    return FAIL;
                }
                unsigned char c0 = (unsigned char)p[0] | 0x20, c1 = (unsigned char)p[1] | 0x20;
                if (c0 == 'd' && (c1 == '8' || c1 == '9' || c1 == 'a' || c1 == 'b' || c1 == 'c'
                                  || c1 == 'd' || c1 == 'e' || c1 == 'f')) {
                    return FAIL;
                }
                p += 4;
            }
            else if (!(c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n'
                       || c == 'r' || c == 't')) {
                return FAIL;
            }
        }
    }
    return FAIL;
}

static inline int
digit_at(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

static const double POW10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/* A JSON number: an int (no '.', 'e' or 'E') or a float, as msgspec reads it. */
static const char *
number(const char *p, const char *end, Val *out)
{
    const char *start = p;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    uint64_t m = 0;
    int sig = 0;         /* significant digits in m (leading zeros left out) */
    int dropped = 0;     /* digits that did not fit in m */
    int frac = 0;        /* digits after the point kept in m */
    if (!digit_at(p, end)) {
        return FAIL;
    }
    if (*p == '0') {
        p++;
    }
    else {
        while (digit_at(p, end)) {
            if (sig < 19) {
                m = m * 10 + (uint64_t)(*p - '0');
                sig++;
            }
            else {
                dropped++;
            }
            p++;
        }
    }
    int is_float = 0;
    if (p < end && *p == '.') {
        is_float = 1;
        p++;
        if (!digit_at(p, end)) {
            return FAIL;
        }
        while (digit_at(p, end)) {
            if (sig < 19) {
                if (m || *p != '0') {
                    sig++;
                }
                m = m * 10 + (uint64_t)(*p - '0');
                frac++;
            }
            else {
                dropped++;  /* digits beyond 19 after the point: the slow path */
            }
            p++;
        }
    }
    long exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        int eneg = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (!digit_at(p, end)) {
            return FAIL;
        }
        while (digit_at(p, end)) {
            if (exp < 100000) {
                exp = exp * 10 + (*p - '0');
            }
            p++;
        }
        if (eneg) {
            exp = -exp;
        }
    }
    if (!is_float) {
        if (dropped || m > (uint64_t)INT64_MAX + neg) {
            return FAIL;  /* beyond int64: Python's to settle */
        }
        out->is_float = 0;
        out->v.i = neg ? (m ? -(int64_t)(m - 1) - 1 : 0) : (int64_t)m;  /* -0 is the int 0 */
        return p;
    }
    double d;
    long e10 = exp - frac;
#if FLT_EVAL_METHOD == 0
    /* Clinger's fast path: an exact significand and an exact power of ten make one correctly
     * rounded IEEE operation. */
    if (!dropped && m <= (uint64_t)1 << 53 && e10 >= -22 && e10 <= 22) {
        d = (double)m;
        d = e10 < 0 ? d / POW10[-e10] : d * POW10[e10];
        if (neg) {
            d = -d;
        }
    }
    else
#endif
    {
        char buf[128];
        size_t n = (size_t)(p - start);
        if (n >= sizeof buf) {
            return FAIL;
        }
        memcpy(buf, start, n);
        buf[n] = '\0';
        char *stop;
        d = PyOS_string_to_double(buf, &stop, NULL);  /* correctly rounded, locale-free */
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return FAIL;
        }
        if (stop != buf + n) {
            return FAIL;
        }
    }
    if (!isfinite(d)) {
        return FAIL;  /* msgspec: "Number out of range" */
    }
    out->is_float = 1;
    out->v.d = d;
    return p;
}

static inline int
two(const char *p)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9') {
        return -1;
    }
    return (p[0] - '0') * 10 + (p[1] - '0');
}

/* `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)"` as microseconds since the epoch (the
 * instant); p after the quote. */
static const char *
timestamp(const char *p, const char *end, int64_t *us)
{
    if (end - p < 20 || p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':'
        || p[16] != ':') {
        return FAIL;
    }
    int yh = two(p), yl = two(p + 2), mo = two(p + 5), d = two(p + 8), h = two(p + 11),
        mi = two(p + 14), s = two(p + 17);
    if (yh < 0 || yl < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 || mi > 59
        || s < 0 || s > 59) {
        return FAIL;
    }
    int64_t y = yh * 100 + yl;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1 || d > mdays[mo - 1] + (mo == 2 && leap)) {
        return FAIL;
    }
    p += 19;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++n > 6) {
                return FAIL;
            }
            frac = frac * 10 + (*p - '0');
            p++;
        }
        if (n == 0) {
            return FAIL;
        }
        while (n++ < 6) {
            frac *= 10;
        }
    }
    int64_t offset_us = 0;
    if (p < end && (*p == '+' || *p == '-')) {
        /* an offset: only the instant counts (aggregates write first/last ts in UTC) */
        if (end - p < 7 || p[3] != ':') {
            return FAIL;
        }
        int oh = two(p + 1), om = two(p + 4);
        if (oh < 0 || oh > 23 || om < 0 || om > 59) {
            return FAIL;
        }
        offset_us = ((int64_t)oh * 60 + om) * 60 * 1000000 * (*p == '-' ? -1 : 1);
        p += 6;
    }
    else if (p < end && *p == 'Z') {
        p++;
    }
    else {
        return FAIL;
    }
    if (p >= end || *p != '"') {
        return FAIL;
    }
    /* days from civil (proleptic Gregorian) */
    int64_t yy = y - (mo <= 2);
    int64_t era = (yy >= 0 ? yy : yy - 399) / 400;
    int64_t yoe = yy - era * 400;
    int64_t doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    *us = ((days * 24 + h) * 60 + mi) * 60 * 1000000 + (int64_t)s * 1000000 + frac - offset_us;
    /* the instant must stay within datetime's years 1-9999 */
    if (*us < -62135596800LL * 1000000 || *us >= 253402300800LL * 1000000) {
        return FAIL;
    }
    return p + 1;
}

enum { F_RID = 1, F_VID = 2, F_TS = 4, F_RECV = 8, F_SIG = 16, F_ALL = 31 };

/* What follows an object's member, p at it: 1 for the object's closing '}', 0 for a ','
 * (*pp past either), -1 for anything else, the end of the line included. */
static inline int
member_end(const char **pp, const char *end)
{
    const char *p = *pp;
    if (p >= end || (*p != '}' && *p != ',')) {
        return -1;
    }
    *pp = p + 1;
    return *p == '}';
}

/* The signals object; p after its '{'. 0 on success, 1 outside what the scanner takes,
 * -1 on memory failure. */
static int
signals(Scan *sc, const char **pp, Line *ln)
{
    const char *p = *pp, *end = sc->end;
    uint32_t pos = 0;
    size_t first = sc->vals.len;
    uint32_t stamp = ++sc->line_no;
    if (p < end && *p == '}') {
        ln->vals = first;
        ln->nvals = 0;
        *pp = p + 1;
        return 0;
    }
    for (;;) {
        if (p >= end || *p != '"') {
            return 1;
        }
        const char *name = p + 1;
        /* The lines of an hour mostly repeat one list of names: the name seen last at this
         * position, already checked, is compared as it stands. */
        Py_ssize_t idx = -1;
        if (pos < sc->hint.len) {
            uint32_t h = VEC_AT(sc->hint, uint32_t, pos);
            Key *k = &VEC_AT(sc->names.keys, Key, h);
            if ((size_t)(end - name) > k->n + 1 && name[k->n] == '"' && name[k->n + 1] == ':'
                && memcmp(k->p, name, k->n) == 0) {
                idx = h;
                p = name + k->n + 2;
            }
        }
        if (idx < 0) {
            uint32_t n;
            p = plain_string(name, end, &n);
            if (p == FAIL || p >= end || *p != ':') {
                return 1;
            }
            p++;
            idx = intern(&sc->names, name, n);
            if (idx < 0) {
                return -1;
            }
            if (pos < sc->hint.len) {
                VEC_AT(sc->hint, uint32_t, pos) = (uint32_t)idx;
            }
            else {
                uint32_t *h = vec_push(&sc->hint);
                if (h == NULL) {
                    return -1;
                }
                *h = (uint32_t)idx;
            }
        }
        pos++;
        while ((size_t)idx >= sc->stamp.len) {
            uint32_t *st = vec_push(&sc->stamp);
            if (st == NULL) {
                return -1;
            }
            *st = 0;
        }
        /* one name twice in a line: which value counts is Python's to settle */
        if (VEC_AT(sc->stamp, uint32_t, idx) == stamp) {
            return 1;
        }
        VEC_AT(sc->stamp, uint32_t, idx) = stamp;
        if (p >= end) {
            return 1;
        }
        char c = *p;
        if (c == '"') {
            p = skip_string(p + 1, end);
        }
        else if (c == 't') {
            p = (end - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : FAIL;
        }
        else if (c == 'f') {
            p = (end - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : FAIL;
        }
        else if (c == '-' || (c >= '0' && c <= '9')) {
            Val v;
            p = number(p, end, &v);
            if (p != FAIL) {
                v.name = (uint32_t)idx;
                Val *slot = vec_push(&sc->vals);
                if (slot == NULL) {
                    return -1;
                }
                *slot = v;
            }
        }
        else {
            return 1;  /* null, nested values: Record refuses them, Python says how */
        }
        if (p == FAIL) {
            return 1;
        }
        int closed = member_end(&p, end);
        if (closed < 0) {
            return 1;
        }
        if (closed) {
            break;
        }
    }
    ln->vals = first;
    ln->nvals = (uint32_t)(sc->vals.len - first);
    *pp = p;
    return 0;
}

/* One line, from '{' to its end (exclusive): 0 (kept), 1 (not a line this scanner takes),
 * 2 (another part's vehicle) or -1 (memory). */
static int
parse_line(Scan *sc, const char *p, const char *line_end)
{
    const char *start = p;
    Line ln;
    unsigned seen = 0;
    sc->end = line_end;
    if (*p != '{') {
        return 1;
    }
    p++;
    for (;;) {
        if (p >= line_end || *p != '"') {
            return 1;
        }
        uint32_t n;
        const char *key = p + 1;
        p = plain_string(key, line_end, &n);
        if (p == FAIL || p >= line_end || *p != ':') {
            return 1;
        }
        p++;
        if (p >= line_end) {
            return 1;
        }
        unsigned f;
        if (n == 10 && memcmp(key, "reading_id", 10) == 0) {
            f = F_RID;
        }
        else if (n == 10 && memcmp(key, "vehicle_id", 10) == 0) {
            f = F_VID;
        }
        else if (n == 2 && memcmp(key, "ts", 2) == 0) {
            f = F_TS;
        }
        else if (n == 11 && memcmp(key, "received_at", 11) == 0) {
            f = F_RECV;
        }
        else if (n == 7 && memcmp(key, "signals", 7) == 0) {
            f = F_SIG;
        }
        else {
            return 1;
        }
        if (seen & f) {
            return 1;
        }
        seen |= f;
        if (f == F_SIG) {
            if (*p != '{') {
                return 1;
            }
            p++;
            int r = signals(sc, &p, &ln);
            if (r) {
                return r;
            }
        }
        else {
            if (*p != '"') {
                return 1;
            }
            p++;
            if (f == F_RID) {
                ln.rid = p;
                p = plain_string(p, line_end, &ln.rid_len);
            }
            else if (f == F_VID) {
                uint32_t vn;
                const char *v = p;
                p = plain_string(p, line_end, &vn);
                if (p != FAIL) {
                    Py_ssize_t idx = intern(&sc->vehicles, v, vn);
                    if (idx < 0) {
                        return -1;
                    }
                    if ((size_t)idx == sc->mine.len) {
                        uint8_t *m = vec_push(&sc->mine);
                        if (m == NULL) {
                            return -1;
                        }
                        *m = VEC_AT(sc->vehicles.keys, Key, idx).h % sc->parts == sc->part;
                    }
                    if (!VEC_AT(sc->mine, uint8_t, idx)) {
                        return 2;  /* another part's: that part checks the rest of the line */
                    }
                    ln.vehicle = (uint32_t)idx;
                }
            }
            else {
                p = timestamp(p, line_end, f == F_TS ? &ln.ts : &ln.received);
            }
            if (p == FAIL) {
                return 1;
            }
        }
        int closed = member_end(&p, line_end);
        if (closed < 0) {
            return 1;
        }
        if (closed) {
            break;
        }
    }
    if (p != line_end || seen != F_ALL) {
        return 1;
    }
    ln.line = start;
    ln.line_len = (size_t)(line_end - start);
    ln.keep = 1;
    ln.tied = 0;
    Line *slot = vec_push(&sc->lines);
    if (slot == NULL) {
        return -1;
    }
    *slot = ln;
    return 0;
}

/* ------------------------------------------------------------------ deduplication */

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

/* One line per identity (vehicle, reading_id) keeps `keep`: the copy received first. Sets
 * `undecided` when copies received at that first instant differ in their bytes. */
static int
dedupe(Scan *sc, int *undecided)
{
    size_t n = sc->lines.len, mask = 1023;
    while (mask < n * 2) {
        mask = mask * 2 + 1;
    }
    /* a slot: the hash's high half, and the line's index + 1 (0: empty), one load a probe */
    uint64_t *slots = PyMem_Calloc(mask + 1, sizeof(uint64_t));
    uint64_t *hashes = PyMem_Malloc((n ? n : 1) * sizeof(uint64_t));
    if (slots == NULL || hashes == NULL) {
        PyMem_Free(slots);
        PyMem_Free(hashes);
        return -1;
    }
    Line *lines = sc->lines.data;
    for (size_t i = 0; i < n; i++) {
        hashes[i] = hash_bytes(lines[i].rid, lines[i].rid_len, mix(lines[i].vehicle + 0x9e37ULL));
    }
    for (size_t i = 0; i < n; i++) {
        if (i + 16 < n) {
            PREFETCH(&slots[hashes[i + 16] & mask]);  /* the table is far bigger than a cache */
        }
        Line *ln = &lines[i];
        uint64_t h = hashes[i], tag = h >> 32 << 32;
        size_t s = h & mask;
        for (;;) {
            uint64_t e = slots[s];
            if (e == 0) {
                slots[s] = tag | (i + 1);
                break;
            }
            Line *w = &lines[(uint32_t)e - 1];
            if ((e >> 32 << 32) == tag && w->vehicle == ln->vehicle && w->rid_len == ln->rid_len
                && memcmp(w->rid, ln->rid, ln->rid_len) == 0) {
                if (ln->received < w->received) {
                    w->keep = 0;
                    slots[s] = tag | (i + 1);
                }
                else {
                    ln->keep = 0;
                    if (ln->received == w->received
                        && (ln->line_len != w->line_len
                            || memcmp(ln->line, w->line, ln->line_len) != 0)) {
                        w->tied = 1;
                    }
                }
                break;
            }
            s = (s + 1) & mask;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (lines[i].keep && lines[i].tied) {
            *undecided = 1;
            break;
        }
    }
    PyMem_Free(slots);
    PyMem_Free(hashes);
    return 0;
}

/* ------------------------------------------------------------------ statistics */

/* Exact sum as non-overlapping partials (Shewchuk; CPython's math.fsum). */
#define INLINE_PARTS 6

typedef struct {
    int64_t count;
    Val lo, hi;
    int n, cap;
    double *heap;
    double inl[INLINE_PARTS];
} Acc;

static int
acc_add(Acc *a, double x)
{
    double *p = a->heap ? a->heap : a->inl;
    int i = 0;
    for (int j = 0; j < a->n; j++) {
        double y = p[j];
        if (fabs(x) < fabs(y)) {
            double t = x;
            x = y;
            y = t;
        }
        double hi = x + y;
        double yr = hi - x;
        double lo = y - yr;
        if (lo != 0.0) {
            p[i++] = lo;
        }
        x = hi;
    }
    if (!isfinite(x)) {
        return 1;
    }
    if (x != 0.0) {
        if (i >= a->cap) {
            int cap = a->cap * 2;
            double *q = PyMem_Malloc(sizeof(double) * (size_t)cap);
            if (q == NULL) {
                return -1;
            }
            memcpy(q, p, sizeof(double) * (size_t)i);
            PyMem_Free(a->heap);
            a->heap = q;
            a->cap = cap;
            p = q;
        }
        p[i++] = x;
    }
    a->n = i;
    return 0;
}

static double
acc_total(Acc *a)
{
    double *p = a->heap ? a->heap : a->inl;
    int n = a->n;
    double hi = 0.0, lo = 0.0;
    if (n > 0) {
        hi = p[--n];
        while (n > 0) {
            double x = hi;
            double y = p[--n];
            hi = x + y;
            double yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) {
                break;
            }
        }
        /* half-even rounding across partials, as math.fsum */
        if (n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0))) {
            double y = lo * 2.0;
            double x = hi + y;
            double yr = x - hi;
            if (y == yr) {
                hi = x;
            }
        }
    }
    return hi;
}

/* -1, 0 or 1 as the int i is below, equal to or above the float d, exactly (Python's int
 * against float comparison). */
static inline int
cmp_int_float(int64_t i, double d)
{
    if (d >= 9223372036854775808.0) {
        return -1;
    }
    if (d < -9223372036854775808.0) {
        return 1;
    }
    double t = trunc(d);  /* within int64: converts exactly */
    int64_t ti = (int64_t)t;
    if (i != ti) {
        return i < ti ? -1 : 1;
    }
    return d > t ? -1 : (d < t ? 1 : 0);
}

static inline int
cmp_val(const Val *a, const Val *b)
{
    if (a->is_float && b->is_float) {
        return (a->v.d > b->v.d) - (a->v.d < b->v.d);
    }
    if (!a->is_float && !b->is_float) {
        return (a->v.i > b->v.i) - (a->v.i < b->v.i);
    }
    return a->is_float ? -cmp_int_float(b->v.i, a->v.d) : cmp_int_float(a->v.i, b->v.d);
}

/* min/max as `extreme(..., key=_tie)`: among equal values, the key (is float, sign) decides:
 * min takes the smaller (an int over a float, -0.0 over 0.0), max the larger. */
static inline int
tie(const Val *v)
{
    return v->is_float ? 2 + !signbit(v->v.d) : v->v.i >= 0;
}

static void
acc_extremes(Acc *a, const Val *v)
{
    if (a->count == 0) {
        a->lo = a->hi = *v;
        return;
    }
    int c = cmp_val(v, &a->lo);
    if (c < 0 || (c == 0 && tie(v) < tie(&a->lo))) {
        a->lo = *v;
    }
    c = cmp_val(v, &a->hi);
    if (c > 0 || (c == 0 && tie(v) > tie(&a->hi))) {
        a->hi = *v;
    }
}

static PyObject *
number_object(const Val *v)
{
    return v->is_float ? PyFloat_FromDouble(v->v.d) : PyLong_FromLongLong((long long)v->v.i);
}

typedef struct {
    int64_t readings, first, last;
} Vehicle;

/* ------------------------------------------------------------------ the entry point */

static void
scan_free(Scan *sc)
{
    intern_free(&sc->vehicles);
    intern_free(&sc->names);
    vec_keep(&sc->lines, &kept.lines);
    vec_keep(&sc->vals, &kept.vals);
    PyMem_Free(sc->hint.data);
    PyMem_Free(sc->stamp.data);
    PyMem_Free(sc->mine.data);
}

/* Result of `aggregate` below; NULL with an exception set, or Py_None. */
static PyObject *
build(Scan *sc)
{
    PyObject *result = NULL, *vehicles_out = NULL;
    PyObject **vstr = NULL, **nstr = NULL;
    Vehicle *veh = NULL;
    uint32_t *slot = NULL;
    Vec accs;
    vec_init(&accs, sizeof(Acc));
    size_t nv = sc->vehicles.keys.len, nn = sc->names.keys.len;
    int undecided = 0;

    if (dedupe(sc, &undecided) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (undecided || (nn && nv > ((size_t)1 << 24) / nn)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    veh = PyMem_Calloc(nv ? nv : 1, sizeof(Vehicle));
    slot = PyMem_Calloc(nv * nn > 0 ? nv * nn : 1, sizeof(uint32_t));
    if (veh == NULL || slot == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Line *lines = sc->lines.data;
    Val *vals = sc->vals.data;
    for (size_t i = 0; i < sc->lines.len; i++) {
        Line *ln = &lines[i];
        if (!ln->keep) {
            continue;
        }
        Vehicle *v = &veh[ln->vehicle];
        if (v->readings++ == 0) {
            v->first = v->last = ln->ts;
        }
        else if (ln->ts < v->first) {
            v->first = ln->ts;
        }
        else if (ln->ts > v->last) {
            v->last = ln->ts;
        }
        uint32_t *row = slot + (size_t)ln->vehicle * nn;
        for (uint32_t k = 0; k < ln->nvals; k++) {
            Val *x = &vals[ln->vals + k];
            uint32_t a = row[x->name];
            if (a == 0) {
                Acc *acc = vec_push(&accs);
                if (acc == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                memset(acc, 0, sizeof *acc);
                acc->cap = INLINE_PARTS;
                a = row[x->name] = (uint32_t)accs.len;
            }
            Acc *acc = &VEC_AT(accs, Acc, a - 1);
            acc_extremes(acc, x);
            acc->count++;
            /* an int as float() makes it: correctly rounded (round half to even) */
            int r = acc_add(acc, x->is_float ? x->v.d : (double)x->v.i);
            if (r < 0) {
                PyErr_NoMemory();
                goto done;
            }
            if (r > 0) {
                result = Py_NewRef(Py_None);
                goto done;
            }
        }
    }
    vstr = PyMem_Calloc(nv ? nv : 1, sizeof(PyObject *));
    nstr = PyMem_Calloc(nn ? nn : 1, sizeof(PyObject *));
    vehicles_out = PyList_New(0);
    if (vstr == NULL || nstr == NULL || vehicles_out == NULL) {
        if (vehicles_out != NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    for (size_t i = 0; i < nv; i++) {
        Vehicle *v = &veh[i];
        if (v->readings == 0) {
            continue;  /* seen only in a copy that did not count */
        }
        Key *k = &VEC_AT(sc->vehicles.keys, Key, i);
        vstr[i] = PyUnicode_FromStringAndSize(k->p, k->n);
        PyObject *sigs = PyList_New(0);
        if (vstr[i] == NULL || sigs == NULL) {
            Py_XDECREF(sigs);
            goto done;
        }
        uint32_t *row = slot + i * nn;
        for (size_t j = 0; j < nn; j++) {
            if (row[j] == 0) {
                continue;
            }
            Acc *acc = &VEC_AT(accs, Acc, row[j] - 1);
            if (acc->count >= 10000000) {  /* SignalStats.final keeps an expansion then */
                Py_DECREF(sigs);
                result = Py_NewRef(Py_None);
                goto done;
            }
            if (nstr[j] == NULL) {
                Key *nk = &VEC_AT(sc->names.keys, Key, j);
                nstr[j] = PyUnicode_FromStringAndSize(nk->p, nk->n);
                if (nstr[j] == NULL) {
                    Py_DECREF(sigs);
                    goto done;
                }
            }
            double total = acc_total(acc);
            if (!isfinite(total)) {  /* the sum leaves the float range: Python's exact path */
                Py_DECREF(sigs);
                result = Py_NewRef(Py_None);
                goto done;
            }
            PyObject *t = Py_BuildValue("(OLNNd)", nstr[j], (long long)acc->count,
                                        number_object(&acc->lo), number_object(&acc->hi),
                                        total);
            if (t == NULL || PyList_Append(sigs, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(sigs);
                goto done;
            }
            Py_DECREF(t);
        }
        PyObject *t = Py_BuildValue("(OLLLN)", vstr[i], (long long)v->readings,
                                    (long long)v->first, (long long)v->last, sigs);
        if (t == NULL || PyList_Append(vehicles_out, t) < 0) {
            Py_XDECREF(t);
            goto done;
        }
        Py_DECREF(t);
    }
    result = Py_BuildValue("(nO)", (Py_ssize_t)sc->lines.len, vehicles_out);
done:
    for (size_t i = 0; i < accs.len; i++) {
        PyMem_Free(VEC_AT(accs, Acc, i).heap);
    }
    PyMem_Free(accs.data);
    if (vstr != NULL) {
        for (size_t i = 0; i < nv; i++) {
            Py_XDECREF(vstr[i]);
        }
    }
    if (nstr != NULL) {
        for (size_t i = 0; i < nn; i++) {
            Py_XDECREF(nstr[i]);
        }
    }
    PyMem_Free(vstr);
    PyMem_Free(nstr);
    PyMem_Free(veh);
    PyMem_Free(slot);
    Py_XDECREF(vehicles_out);
    return result;
}

static PyObject *
aggregate_hour(PyObject *self, PyObject *args)
{
    PyObject *arg;
    Py_ssize_t part = 0, parts = 1;
    if (!PyArg_ParseTuple(args, "O|nn:aggregate_hour", &arg, &part, &parts)) {
        return NULL;
    }
    if (parts < 1 || part < 0 || part >= parts) {
        PyErr_SetString(PyExc_ValueError, "aggregate_hour(): part must be in range(parts)");
        return NULL;
    }
    if (!PyList_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "aggregate_hour() takes a list of bytes-like objects");
        return NULL;
    }
    /* Hold the blobs: the scan keeps pointers into them, and a list item can be replaced.
     * Any contiguous buffer will do (bytes, or a file mapped into memory): a view of each is
     * held until the end. */
    PyObject *blobs = PySequence_Tuple(arg);
    if (blobs == NULL) {
        return NULL;
    }
    Py_ssize_t nb = PyTuple_GET_SIZE(blobs);
    Py_buffer *views = PyMem_Calloc(nb ? (size_t)nb : 1, sizeof(Py_buffer));
    if (views == NULL) {
        Py_DECREF(blobs);
        return PyErr_NoMemory();
    }
    Py_ssize_t held = 0;
    for (; held < nb; held++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(blobs, held), &views[held],
                               PyBUF_SIMPLE) < 0) {
            for (Py_ssize_t b = 0; b < held; b++) {
                PyBuffer_Release(&views[b]);
            }
            PyMem_Free(views);
            Py_DECREF(blobs);
            PyErr_SetString(PyExc_TypeError,
                            "aggregate_hour() takes a list of bytes-like objects");
            return NULL;
        }
    }
    Scan sc;
    memset(&sc, 0, sizeof sc);
    vec_take(&sc.lines, &kept.lines, sizeof(Line));
    vec_take(&sc.vals, &kept.vals, sizeof(Val));
    int owner = !kept.busy;
    kept.busy = 1;
    vec_init(&sc.hint, sizeof(uint32_t));
    vec_init(&sc.stamp, sizeof(uint32_t));
    vec_init(&sc.mine, sizeof(uint8_t));
    sc.part = (uint64_t)part;
    sc.parts = (uint64_t)parts;
    PyObject *result = NULL;
    if (intern_init(&sc.vehicles) < 0 || intern_init(&sc.names) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t b = 0; b < nb; b++) {
        const char *p = views[b].buf;
        const char *end = p + views[b].len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *line_end = nl ? nl : end;
            if (line_end > p) {  /* empty lines are skipped, as decode_lines does */
                int r = parse_line(&sc, p, line_end);
                if (r < 0) {
                    PyErr_NoMemory();
                    goto done;
                }
                if (r == 1 || sc.lines.len >= UINT32_MAX - 1) {
                    result = Py_NewRef(Py_None);
                    goto done;
                }
            }
            p = nl ? nl + 1 : end;
        }
    }
    result = build(&sc);
done:
    if (owner) {
        kept.busy = 0;
    }
    scan_free(&sc);
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyBuffer_Release(&views[b]);
    }
    PyMem_Free(views);
    Py_DECREF(blobs);
    return result;
}

/* A forked child drops the kept arrays: writing into them would copy every page of the
 * parent's, which costs more than fresh memory. */
static PyObject *
forget(PyObject *self, PyObject *args)
{
    if (!kept.busy) {
        PyMem_Free(kept.lines.data);
        PyMem_Free(kept.vals.data);
        vec_init(&kept.lines, sizeof(Line));
        vec_init(&kept.vals, sizeof(Val));
    }
    Py_RETURN_NONE;
}

static PyObject *
probe(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(1);
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_NOARGS, "1"},
    {"forget", forget, METH_NOARGS, "drop the arrays kept between calls"},
    {"aggregate_hour", aggregate_hour, METH_VARARGS,
     "aggregate_hour(blobs, part=0, parts=1) -> (lines, [(vehicle_id, readings, first_us, "
     "last_us, [(name, count, min, max, fsum)])]) or None when Python must decide; the lines "
     "and vehicles of one part of the vehicles only"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hourscan", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__hourscan(void)
{
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    /* os.register_at_fork(after_in_child=forget), where there is fork */
    PyObject *os = PyImport_ImportModule("os");
    PyObject *reg = os ? PyObject_GetAttrString(os, "register_at_fork") : NULL;
    PyObject *fn = reg ? PyObject_GetAttrString(m, "forget") : NULL;
    PyObject *kw = fn ? Py_BuildValue("{sO}", "after_in_child", fn) : NULL;
    PyObject *noargs = kw ? PyTuple_New(0) : NULL;
    PyObject *done = noargs ? PyObject_Call(reg, noargs, kw) : NULL;
    if (done == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(done);
    Py_XDECREF(noargs);
    Py_XDECREF(kw);
    Py_XDECREF(fn);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    return m;
}
