/* Ingest's per-reading work in one pass: reading ids, hour grouping, event times and lake lines.

   The input is msgspec's JSON of the request's readings (`encode_lines`, one line a reading),
   so every value keeps msgspec's exact spelling; this module only cuts those lines apart and
   splices the pieces into the lake line and into the reading-id payload (whose signals it
   sorts by name, as the canonical encoder does). Anything it does not recognise (an unexpected
   shape, a timestamp it cannot read, an offset finer than a minute, a name or id JSON escapes)
   makes `prepare` return None, and the caller takes the pure-Python path: the output is then
   the same by construction, only slower.

   SHA-256 comes from OpenSSL's libcrypto when its headers and library were there at build time
   (TELEMETRY_OPENSSL; its assembly uses the CPU's SHA instructions), else from the portable
   implementation below. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ SHA-256 */

#ifdef TELEMETRY_OPENSSL
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

typedef SHA256_CTX sha_ctx;
static void sha_init(sha_ctx *c) { SHA256_Init(c); }
static void sha_update(sha_ctx *c, const void *p, size_t n) { SHA256_Update(c, p, n); }
static void sha_final(sha_ctx *c, unsigned char out[32]) { SHA256_Final(out, c); }
#define SHA_BACKEND "openssl"

#else

typedef struct {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t fill;
} sha_ctx;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void
sha_block(uint32_t h[8], const unsigned char *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void
sha_init(sha_ctx *c)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, iv, sizeof iv);
    c->len = 0;
    c->fill = 0;
}

static void
sha_update(sha_ctx *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    c->len += n;
    if (c->fill) {
        size_t take = 64 - c->fill < n ? 64 - c->fill : n;
        memcpy(c->buf + c->fill, p, take);
        c->fill += take, p += take, n -= take;
        if (c->fill < 64)
            return;
        sha_block(c->h, c->buf);
        c->fill = 0;
    }
    for (; n >= 64; p += 64, n -= 64)
        sha_block(c->h, p);
    memcpy(c->buf, p, n);
    c->fill = n;
}

static void
sha_final(sha_ctx *c, unsigned char out[32])
{
    uint64_t bits = c->len * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (c->fill < 56 ? 56 : 120) - c->fill;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha_update(c, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(c->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)c->h[i];
    }
}
#define SHA_BACKEND "portable"
#endif

/* ------------------------------------------------------------------ JSON pieces */

/* End of the JSON string starting at p (p[0] == '"'), one past its closing quote; NULL when it
   does not close before `end`. Callers bound `end` by the line's newline (JSON escapes
   newlines inside strings). A quote closes the string when an even number of backslashes
   precedes it. */
static const char *
skip_string(const char *p, const char *end)
{
    const char *start = ++p;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p));
        if (q == NULL)
            return NULL;
        const char *b = q;
        while (b > start && b[-1] == '\\')
            b--;
        if ((q - b) % 2 == 0)
            return q + 1;
        p = q + 1;
    }
    return NULL;
}

/* Consume the literal `lit` at *p. */
static int
take(const char **p, const char *end, const char *lit, size_t n)
{
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
        return 0;
    *p += n;
    return 1;
}
#define TAKE(p, end, lit) take(&(p), (end), (lit), sizeof(lit) - 1)

/* ------------------------------------------------------------------ time */

static int64_t
floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void
civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static int
digits(const char *p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* msgspec's spelling of an aware datetime, YYYY-MM-DDTHH:MM:SS[.ffffff](Z|+HH:MM|-HH:MM), as
   microseconds since the epoch (UTC). */
static int
parse_ts(const char *p, size_t n, int64_t *us)
{
    int y, mo, d, h, mi, s, frac = 0, oh, om;
    if (n < 20 || p[4] != '-' || p[7] != '-' || p[10] != 'T' || p[13] != ':' || p[16] != ':')
        return 0;
    if (!digits(p, 4, &y) || !digits(p + 5, 2, &mo) || !digits(p + 8, 2, &d) ||
        !digits(p + 11, 2, &h) || !digits(p + 14, 2, &mi) || !digits(p + 17, 2, &s))
        return 0;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 59)
        return 0;
    size_t i = 19;
    if (p[i] == '.') {
        if (n < i + 8 || !digits(p + i + 1, 6, &frac))
            return 0;
        i += 7;
    }
    int64_t offset = 0;
    if (n == i + 1 && p[i] == 'Z') {
    }
    else if (n == i + 6 && (p[i] == '+' || p[i] == '-') && p[i + 3] == ':' &&
             digits(p + i + 1, 2, &oh) && digits(p + i + 4, 2, &om) && oh < 24 && om < 60) {
        offset = (oh * 60 + om) * 60;
        if (p[i] == '-')
            offset = -offset;
    }
    else
        return 0;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - offset;
    *us = secs * 1000000 + frac;
    return 1;
}

/* The UTC spelling of `us`: YYYY-MM-DDTHH:MM:SS.ffffffZ (27 chars) into out; the length of the
   lake line's spelling (msgspec's: without the fraction when it is zero) into *lake_len.
   0 for years outside 1000-9999 (msgspec and canonical_ts spell those differently). */
static int
format_ts(int64_t us, char out[27], size_t *lake_len)
{
    int64_t secs = floor_div(us, 1000000);
    int frac = (int)(us - secs * 1000000);
    int64_t days = floor_div(secs, 86400);
    int sod = (int)(secs - days * 86400);
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 1000 || y > 9999)
        return 0;
    int v[7] = {(int)y, m, d, sod / 3600, sod / 60 % 60, sod % 60, frac};
    static const int width[7] = {4, 2, 2, 2, 2, 2, 6};
    static const char after[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    char *o = out;
    for (int f = 0; f < 7; f++) {
        for (int k = width[f] - 1, x = v[f]; k >= 0; k--, x /= 10)
            o[k] = (char)('0' + x % 10);
        o += width[f];
        *o++ = after[f];
    }
    *lake_len = frac ? 27 : 20;
    return 1;
}

/* ------------------------------------------------------------------ output per hour */

typedef struct {
    int64_t hour;
    char *buf;
    size_t len, cap;
    PyObject *ts;      /* list[int] */
    PyObject *indices; /* list[int] */
} group_t;

typedef struct {
    group_t *g;
    Py_ssize_t n, cap, last;
} groups_t;

static void
groups_free(groups_t *gs)
{
    for (Py_ssize_t i = 0; i < gs->n; i++) {
        PyMem_Free(gs->g[i].buf);
        Py_XDECREF(gs->g[i].ts);
        Py_XDECREF(gs->g[i].indices);
    }
    PyMem_Free(gs->g);
}

static group_t *
group_for(groups_t *gs, int64_t hour)
{
    if (gs->n && gs->g[gs->last].hour == hour)
        return &gs->g[gs->last];
    for (Py_ssize_t i = 0; i < gs->n; i++)
        if (gs->g[i].hour == hour) {
            gs->last = i;
            return &gs->g[i];
        }
    if (gs->n == gs->cap) {
        Py_ssize_t cap = gs->cap ? gs->cap * 2 : 4;
        group_t *g = PyMem_Realloc(gs->g, cap * sizeof(group_t));
        if (g == NULL)
            return NULL;
        gs->g = g, gs->cap = cap;
    }
    group_t *g = &gs->g[gs->n];
    memset(g, 0, sizeof *g);
    g->hour = hour;
    g->ts = PyList_New(0);
    g->indices = PyList_New(0);
    gs->last = gs->n++;
    if (g->ts == NULL || g->indices == NULL)
        return NULL;
    return g;
}

static int
append(group_t *g, const void *p, size_t n)
{
    if (g->len + n > g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 4096;
        while (cap < g->len + n)
            cap *= 2;
        char *b = PyMem_Realloc(g->buf, cap);
        if (b == NULL)
            return 0;
        g->buf = b, g->cap = cap;
    }
    memcpy(g->buf + g->len, p, n);
    g->len += n;
    return 1;
}

static int
append_int(PyObject *list, long long v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL)
        return 0;
    int rc = PyList_Append(list, o);
    Py_DECREF(o);
    return rc == 0;
}

/* ------------------------------------------------------------------ prepare */

static const char HEX[] = "0123456789abcdef";
#define ID_PREFIX "telemetry.reading.v1\n"

/* Whether the reading's ts is one msgspec spells with its exact offset: UTC, or an offset of
   whole minutes (msgspec drops seconds of an offset). */
static int
ts_offset_ok(PyObject *reading, PyObject *ts_name, PyObject **last_tz)
{
    PyObject *ts = PyObject_GetAttr(reading, ts_name);
    if (ts == NULL)
        return -1;
    int ok = 0;
    if (PyDateTime_Check(ts)) {
        PyObject *tz = PyDateTime_DATE_GET_TZINFO(ts);
        if (tz == PyDateTime_TimeZone_UTC || tz == *last_tz)
            ok = 1;
        else if (PyTZInfo_Check(tz) && Py_IS_TYPE(tz, PyDateTime_TimeZone_UTC->ob_type)) {
            /* a fixed-offset `timezone`: its offset is the same for every datetime */
            PyObject *off = PyObject_CallMethod(tz, "utcoffset", "O", ts);
            if (off == NULL) {
                Py_DECREF(ts);
                return -1;
            }
            if (PyDelta_Check(off) && PyDateTime_DELTA_GET_SECONDS(off) % 60 == 0 &&
                PyDateTime_DELTA_GET_MICROSECONDS(off) == 0) {
                ok = 1;
                Py_INCREF(tz);
                Py_XDECREF(*last_tz);
                *last_tz = tz;
            }
            Py_DECREF(off);
        }
    }
    Py_DECREF(ts);
    return ok;
}

/* One member of a signals object as msgspec wrote it: the key's characters (between its
   quotes) and the value's JSON. */
typedef struct {
    const char *k, *v;
    size_t klen, vlen;
} member_t;

/* The members of the object spanning [p, end), msgspec's JSON of a reading's signals. 0 when it
   is not an object of scalars, or a key holds an escape (its bytes would not sort as the
   string does); *m grows as needed (PyMem). */
static int
split_members(const char *p, const char *end, member_t **m, Py_ssize_t *cap, Py_ssize_t *n)
{
    *n = 0;
    if (end - p < 2 || *p != '{' || end[-1] != '}')
        return 0;
    p++, end--;
    if (p == end)
        return 1;
    for (;;) {
        if (p >= end || *p != '"')
            return 0;
        const char *k = p + 1, *ke = skip_string(p, end);
        if (ke == NULL || memchr(k, '\\', (size_t)(ke - 1 - k)) != NULL)
            return 0;
        p = ke;
        if (p >= end || *p != ':')
            return 0;
        const char *v = ++p;
        if (p < end && *p == '"') {
            if ((p = skip_string(p, end)) == NULL)
                return 0;
        }
        else {
            while (p < end && *p != ',') {
                if (*p == '{' || *p == '[' || *p == '"' || *p == '}' || *p == ']')
                    return 0;
                p++;
            }
            if (p == v)
                return 0;
        }
        if (*n == *cap) {
            Py_ssize_t c = *cap ? *cap * 2 : 32;
            member_t *grown = PyMem_Realloc(*m, (size_t)c * sizeof(member_t));
            if (grown == NULL)
                return -1;
            *m = grown, *cap = c;
        }
        (*m)[*n] = (member_t){k, v, (size_t)(ke - 1 - k), (size_t)(p - v)};
        ++*n;
        if (p == end)
            return 1;
        if (*p != ',')
            return 0;
        p++;
    }
}

/* Python's order of str keys: their UTF-8 bytes' order. */
static int
member_cmp(const void *a, const void *b)
{
    const member_t *x = a, *y = b;
    int c = memcmp(x->k, y->k, x->klen < y->klen ? x->klen : y->klen);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static void
sort_members(member_t *m, Py_ssize_t n)
{
    if (n > 16) {
        qsort(m, (size_t)n, sizeof *m, member_cmp);
        return;
    }
    for (Py_ssize_t i = 1; i < n; i++) {
        member_t x = m[i];
        Py_ssize_t j = i;
        for (; j > 0 && member_cmp(&m[j - 1], &x) > 0; j--)
            m[j] = m[j - 1];
        m[j] = x;
    }
}

static PyObject *
prepare(PyObject *self, PyObject *args)
{
    PyObject *readings;
    Py_buffer plain = {0}, received = {0};
    if (!PyArg_ParseTuple(args, "O!y*y*:prepare", &PyList_Type, &readings, &plain, &received))
        return NULL;
    member_t *members = NULL;
    Py_ssize_t members_cap = 0, nm;
    group_t scratch = {0}; /* the reading-id payload */
    PyObject *result = NULL, *ids = NULL, *ts_name = NULL, *rid_name = NULL;
    PyObject *last_tz = NULL;
    groups_t gs = {0};
    /* A copy of the list: a `ts` property of a subclass could change the caller's list. */
    PyObject *own = PyList_GetSlice(readings, 0, PyList_GET_SIZE(readings));
    if (own == NULL) {
        PyBuffer_Release(&plain);
        PyBuffer_Release(&received);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(own);
    const char *pp = plain.buf, *pend = pp + plain.len;
    const char *recv = received.buf;
    size_t recv_len = (size_t)received.len;

    ids = PyList_New(n);
    ts_name = PyUnicode_InternFromString("ts");
    rid_name = PyUnicode_InternFromString("reading_id");
    if (ids == NULL || ts_name == NULL || rid_name == NULL)
        goto error;

    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *reading = PyList_GET_ITEM(own, i);
        int ok = ts_offset_ok(reading, ts_name, &last_tz);
        if (ok < 0)
            goto error;
        if (!ok)
            goto fallback;

        /* The id given, if any, and its JSON: its own characters between quotes when none
           of them is one JSON escapes (the contract's ids never are). */
        PyObject *given = PyObject_GetAttr(reading, rid_name);
        if (given == NULL)
            goto error;
        const char *gid = NULL;
        Py_ssize_t gid_len = 0;
        if (given == Py_None)
            Py_DECREF(given);
        else {
            PyList_SET_ITEM(ids, i, given); /* the list owns it from here */
            if (!PyUnicode_Check(given) || !PyUnicode_IS_ASCII(given))
                goto fallback;
            gid = (const char *)PyUnicode_1BYTE_DATA(given);
            gid_len = PyUnicode_GET_LENGTH(given);
            for (Py_ssize_t k = 0; k < gid_len; k++)
                if (gid[k] < 0x20 || gid[k] == '"' || gid[k] == '\\' || gid[k] == 0x7f)
                    goto fallback;
        }

        /* The plain line: {"vehicle_id":V,"ts":"T","signals":S[,"reading_id":R]}\n. JSON
           escapes newlines inside strings, so the line ends at the next one; S is what lies
           between the known head and the known tail. */
        const char *line_end = memchr(pp, '\n', (size_t)(pend - pp));
        if (line_end == NULL)
            goto fallback;
        const char *p = pp, *vid, *vid_end, *ts, *ts_end, *sig, *sig_end, *rid = NULL,
                   *rid_end = NULL;
        if (!TAKE(p, line_end, "{\"vehicle_id\":") || p >= line_end || *p != '"')
            goto fallback;
        vid = p;
        if ((p = vid_end = skip_string(p, line_end)) == NULL ||
            !TAKE(p, line_end, ",\"ts\":\""))
            goto fallback;
        ts = p;
        if ((p = ts_end = memchr(p, '"', (size_t)(line_end - p))) == NULL ||
            !TAKE(p, line_end, "\",\"signals\":"))
            goto fallback;
        sig = p;
        size_t tail = gid ? 17 + (size_t)gid_len : 1;
        if ((size_t)(line_end - sig) < tail + 2)
            goto fallback;
        sig_end = line_end - tail;
        if (*sig != '{' || sig_end[-1] != '}' || line_end[-1] != '}')
            goto fallback;
        if (gid) {
            if (memcmp(sig_end, ",\"reading_id\":\"", 15) != 0 ||
                memcmp(sig_end + 15, gid, (size_t)gid_len) != 0 || line_end[-2] != '"')
                goto fallback;
            rid = sig_end + 14;
            rid_end = line_end - 1;
        }
        pp = line_end + 1;

        int64_t us;
        char when[28];
        size_t lake_len;
        if (!parse_ts(ts, (size_t)(ts_end - ts), &us) || !format_ts(us, when, &lake_len))
            goto fallback;
        int64_t t_ms = floor_div(us, 1000);
        int64_t hour = floor_div(t_ms, 3600000) * 3600;

        char hex[34];
        if (gid == NULL) {
            /* The canonical JSON: [vehicle_id, ts with six digits, signals by sorted key] */
            int split = split_members(sig, sig_end, &members, &members_cap, &nm);
            if (split < 0) {
                PyErr_NoMemory();
                goto error;
            }
            if (split == 0)
                goto fallback;
            sort_members(members, nm);
            scratch.len = 0;
            int ok = append(&scratch, ID_PREFIX "[", sizeof(ID_PREFIX "[") - 1) &&
                     append(&scratch, vid, (size_t)(vid_end - vid)) &&
                     append(&scratch, ",\"", 2) && append(&scratch, when, 27) &&
                     append(&scratch, "\",{", 3);
            for (Py_ssize_t k = 0; ok && k < nm; k++)
                ok = append(&scratch, &",\""[k == 0], k == 0 ? 1 : 2) &&
                     append(&scratch, members[k].k, members[k].klen) &&
                     append(&scratch, "\":", 2) &&
                     append(&scratch, members[k].v, members[k].vlen);
            if (!ok || !append(&scratch, "}]", 2)) {
                PyErr_NoMemory();
                goto error;
            }
            sha_ctx c;
            unsigned char digest[32];
            sha_init(&c);
            sha_update(&c, scratch.buf, scratch.len);
            sha_final(&c, digest);
            hex[0] = hex[33] = '"';
            for (int b = 0; b < 16; b++) {
                hex[1 + 2 * b] = HEX[digest[b] >> 4];
                hex[2 + 2 * b] = HEX[digest[b] & 15];
            }
            PyObject *id = PyUnicode_New(32, 127);
            if (id == NULL)
                goto error;
            memcpy(PyUnicode_1BYTE_DATA(id), hex + 1, 32);
            PyList_SET_ITEM(ids, i, id);
            rid = hex;
            rid_end = hex + 34;
        }

        /* The lake line, Record's field order. */
        group_t *g = group_for(&gs, hour);
        if (g == NULL)
            goto error;
        if (g->cap == 0) {
            /* Room for the request's lines: no copies as they grow, in the usual request of
               one hour. */
            size_t room = gs.n == 1 ? (size_t)plain.len + (size_t)n * (recv_len + 64) : 4096;
            if ((g->buf = PyMem_Malloc(room)) == NULL) {
                PyErr_NoMemory();
                goto error;
            }
            g->cap = room;
        }
        if (!append(g, "{\"reading_id\":", 14) || !append(g, rid, (size_t)(rid_end - rid)) ||
            !append(g, ",\"vehicle_id\":", 14) || !append(g, vid, (size_t)(vid_end - vid)) ||
            !append(g, ",\"ts\":\"", 7) || !append(g, when, lake_len - 1) ||
            !append(g, "Z\",\"received_at\":", 17) || !append(g, recv, recv_len) ||
            !append(g, ",\"signals\":", 11) || !append(g, sig, (size_t)(sig_end - sig)) ||
            !append(g, "}\n", 2)) {
            PyErr_NoMemory();
            goto error;
        }
        if (!append_int(g->ts, t_ms) || !append_int(g->indices, i))
            goto error;
    }
    if (pp != pend)
        goto fallback;

    PyObject *by_hour = PyDict_New();
    if (by_hour == NULL)
        goto error;
    for (Py_ssize_t k = 0; k < gs.n; k++) {
        group_t *g = &gs.g[k];
        PyObject *key = PyLong_FromLongLong(g->hour);
        PyObject *lines = PyBytes_FromStringAndSize(g->buf, (Py_ssize_t)g->len);
        PyObject *val = key && lines ? PyTuple_Pack(3, lines, g->ts, g->indices) : NULL;
        int rc = val ? PyDict_SetItem(by_hour, key, val) : -1;
        Py_XDECREF(key);
        Py_XDECREF(lines);
        Py_XDECREF(val);
        if (rc < 0) {
            Py_DECREF(by_hour);
            goto error;
        }
    }
    result = PyTuple_Pack(2, ids, by_hour);
    Py_DECREF(by_hour);
    goto done;

fallback:
    result = Py_NewRef(Py_None);
    goto done;
error:
    result = NULL;
done:
    /* ids may hold NULL slots after a fallback; list dealloc skips them. */
    Py_XDECREF(ids);
    Py_XDECREF(last_tz);
    Py_DECREF(own);
    Py_XDECREF(ts_name);
    Py_XDECREF(rid_name);
    groups_free(&gs);
    PyBuffer_Release(&plain);
    PyBuffer_Release(&received);
    PyMem_Free(members);
    PyMem_Free(scratch.buf);
    return result;
}

static PyObject *
sha256_hex(PyObject *self, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    sha_ctx c;
    unsigned char digest[32];
    char hex[64];
    sha_init(&c);
    sha_update(&c, b.buf, (size_t)b.len);
    sha_final(&c, digest);
    PyBuffer_Release(&b);
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = HEX[digest[i] >> 4];
        hex[2 * i + 1] = HEX[digest[i] & 15];
    }
    return PyUnicode_FromStringAndSize(hex, 64);
}

static PyObject *
probe(PyObject *self, PyObject *args)
{
    return PyLong_FromLong(1);
}

static PyMethodDef methods[] = {
    {"probe", probe, METH_NOARGS, "1"},
    {"prepare", prepare, METH_VARARGS,
     "prepare(readings, record_lines, received_at_json) -> "
     "(ids, {hour: (lines, ts_ms, indices)}) | None"},
    {"sha256_hex", sha256_hex, METH_O, "The SHA-256 of a buffer in hex, by this module's SHA-256."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ingestcore", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__ingestcore(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SHA256_BACKEND", SHA_BACKEND) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
