/* The upload check's fast path in C: whole lines of JSONL, scanned in place, without the GIL.
 *
 * scan(data, start, end, format, max_line_bytes) -> (lines, examples, stop, status)
 *
 * From byte `start` to byte `end` of `data` (whole lines; the last newline may be missing), each
 * line is either accepted (a blank line, or an example of `format`: 1 chat, 2 completion) or not. The
 * scan stops at the first line it does not accept: `stop` is that line's first byte and `status`
 * says why (TOO_LONG: longer than max_line_bytes; UNSURE: the Python reference path decides,
 * worker/training/validation.py). DONE: every line to the end was accepted. `lines` and
 * `examples` count the lines accepted.
 *
 * The contract: accept only what the reference path (json.loads, then example_format) accepts
 * with the same format. Anything unusual is UNSURE, never a verdict of its own: escapes in a key
 * or a role, duplicate keys where keys matter, a weight other than the tokens 0 and 1, NaN and
 * Infinity, an integer of more than MAX_INT_DIGITS digits, nesting past MAX_DEPTH, bytes that are
 * not strict UTF-8. The JSON grammar is RFC 8259.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { DONE = 0, UNSURE = 1, TOO_LONG = 2 };
enum { CHAT = 1, COMPLETION = 2 };
#define MAX_DEPTH 64
#define MAX_INT_DIGITS 4000 /* Python refuses to convert an int of more than 4300 digits */

typedef const unsigned char *Ptr;

/* 1: a byte that needs a look inside a string ('"', '\\', control bytes, non-ASCII) */
static unsigned char special[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++)
        special[c] = c < 0x20 || c == '"' || c == '\\' || c >= 0x80;
}

static inline Ptr skip_ws(Ptr p, Ptr end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
        p++;
    return p;
}

/* One strict UTF-8 sequence starting at p (a byte >= 0x80): its end, or NULL. */
static Ptr utf8_seq(Ptr p, Ptr end) {
    unsigned c = p[0];
    if (c >= 0xC2 && c <= 0xDF) {
        if (end - p < 2 || (p[1] & 0xC0) != 0x80) return NULL;
        return p + 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return NULL;
        if (c == 0xE0 && p[1] < 0xA0) return NULL; /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return NULL; /* a surrogate */
        return p + 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return NULL;
        if (c == 0xF0 && p[1] < 0x90) return NULL; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return NULL; /* past U+10FFFF */
        return p + 4;
    }
    return NULL;
}

static inline int is_hex(unsigned c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

typedef struct {
    Ptr body;       /* the bytes between the quotes */
    Py_ssize_t len;
    int escaped;    /* a backslash in it */
    int visible;    /* a raw byte 0x21..0x7F outside escapes: non-blank after str.strip() */
} Str;

/* The first byte at or after q that needs a look inside a string (or end): sixteen bytes at a
 * time with SSE2 (every x86-64 has it), else eight at a time in a word (SWAR). */
#ifdef __SSE2__
#include <emmintrin.h>
static inline Ptr plain_run(Ptr q, Ptr end) {
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - q >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)q);
        /* signed: below 0x20 is a control byte or (negative) one of 0x80..0xFF */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)),
                                   _mm_cmplt_epi8(x, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask) return q + __builtin_ctz((unsigned)mask);
        q += 16;
    }
    while (q < end && !special[*q])
        q++;
    return q;
}
#else
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
/* nonzero high bits where a byte is special (exact as a whole: zero iff none is) */
static inline uint64_t special8(uint64_t x) {
    uint64_t quote = x ^ (ONES * '"'), backslash = x ^ (ONES * '\\');
    return (((quote - ONES) & ~quote) | ((backslash - ONES) & ~backslash) | (x - ONES * 0x20) | x) & HIGHS;
}

static inline Ptr plain_run(Ptr q, Ptr end) {
    while (end - q >= 8) {
        uint64_t x;
        memcpy(&x, q, 8);
        if (special8(x)) break;
        q += 8;
    }
    while (q < end && !special[*q])
        q++;
    return q;
}
#endif

/* A string at p (p[0] == '"'): the byte after its closing quote, or NULL. */
static Ptr scan_string(Ptr p, Ptr end, Str *s) {
    Ptr q = ++p;
    s->escaped = s->visible = 0;
    for (;;) {
        Ptr run = q;
        q = plain_run(q, end);
        if (!s->visible && q > run) {
            for (Ptr r = run; r < q; r++)
                if (*r != ' ') { s->visible = 1; break; }
        }
        if (q >= end) return NULL;
        unsigned c = *q;
        if (c == '"') {
            s->body = p;
            s->len = q - p;
            return q + 1;
        }
        if (c == '\\') {
            s->escaped = 1;
            if (end - q < 2) return NULL;
            switch (q[1]) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                q += 2;
                break;
            case 'u':
                if (end - q < 6 || !is_hex(q[2]) || !is_hex(q[3]) || !is_hex(q[4]) || !is_hex(q[5])) return NULL;
                q += 6;
                break;
            default:
                return NULL;
            }
        } else if (c < 0x20) {
            return NULL; /* json.loads refuses raw control characters in strings */
        } else if ((q = utf8_seq(q, end)) == NULL) {
            return NULL;
        }
    }
}

static Ptr skip_value(Ptr p, Ptr end, int depth);

static Ptr skip_number(Ptr p, Ptr end) {
    if (p < end && *p == '-') p++;
    if (p >= end) return NULL;
    Ptr digits = p;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < end && *p >= '0' && *p <= '9') p++;
    else return NULL; /* -Infinity, or not a number */
    if (p - digits > MAX_INT_DIGITS) return NULL;
    if (p < end && *p == '.') {
        Ptr d = ++p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        Ptr d = p;
        while (p < end && *p >= '0' && *p <= '9') p++;
        if (p == d) return NULL;
    }
    return p;
}

static Ptr skip_literal(Ptr p, Ptr end, const char *word, Py_ssize_t n) {
    return end - p >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* An object or an array whose contents do not matter: only its syntax is checked. */
static Ptr skip_container(Ptr p, Ptr end, int depth) {
    int object = *p == '{';
    unsigned char close = object ? '}' : ']';
    Str key;
    p = skip_ws(p + 1, end);
    if (p < end && *p == close) return p + 1;
    for (;;) {
        if (object) {
            if (p >= end || *p != '"' || (p = scan_string(p, end, &key)) == NULL) return NULL;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return NULL;
            p = skip_ws(p + 1, end);
        }
        if ((p = skip_value(p, end, depth + 1)) == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == close) return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

static Ptr skip_value(Ptr p, Ptr end, int depth) {
    Str s;
    if (p >= end || depth > MAX_DEPTH) return NULL;
    switch (*p) {
    case '"': return scan_string(p, end, &s);
    case '{': case '[': return skip_container(p, end, depth);
    case 't': return skip_literal(p, end, "true", 4);
    case 'f': return skip_literal(p, end, "false", 5);
    case 'n': return skip_literal(p, end, "null", 4);
    default: return skip_number(p, end);
    }
}

static int key_is(const Str *key, const char *name) {
    Py_ssize_t n = (Py_ssize_t)strlen(name);
    return key->len == n && memcmp(key->body, name, n) == 0;
}

/* One pass over an object's members: `member` is called with each key (escape-free: an escaped
 * key is UNSURE, as it might spell a key that matters) and the position of its value, and
 * returns the position after the value, or NULL to stop. */
typedef Ptr (*Member)(void *ctx, const Str *key, Ptr value, Ptr end);

static Ptr scan_object(Ptr p, Ptr end, void *ctx, Member member) {
    Str key;
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        if (p >= end || *p != '"' || (p = scan_string(p, end, &key)) == NULL || key.escaped) return NULL;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        if ((p = member(ctx, &key, p, end)) == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == '}') return p + 1;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

/* --- chat: {"messages": [{"role": ..., "content": ..., "weight": 0|1}, ...], ...} --- */
enum { SEEN_ROLE = 1, SEEN_CONTENT = 2, SEEN_WEIGHT = 4 };

typedef struct {
    int seen;
    int assistant;
} Message;

static Ptr message_member(void *ctx, const Str *key, Ptr p, Ptr end) {
    Message *m = ctx;
    Str s;
    if (key_is(key, "role")) {
        if (m->seen & SEEN_ROLE || p >= end || *p != '"' || (p = scan_string(p, end, &s)) == NULL || s.escaped)
            return NULL;
        m->seen |= SEEN_ROLE;
        if (key_is(&s, "assistant")) m->assistant = 1;
        else if (!key_is(&s, "user") && !key_is(&s, "system") && !key_is(&s, "developer")) return NULL;
        return p;
    }
    if (key_is(key, "content")) {
        if (m->seen & SEEN_CONTENT || p >= end || *p != '"') return NULL;
        m->seen |= SEEN_CONTENT;
        return scan_string(p, end, &s);
    }
    if (key_is(key, "weight")) { /* the tokens 0 and 1 only (the reference path decides 1.0, 1e0...) */
        if (m->seen & SEEN_WEIGHT || p >= end || (*p != '0' && *p != '1')) return NULL;
        m->seen |= SEEN_WEIGHT;
        Ptr after = skip_number(p, end);
        return after == p + 1 ? after : NULL;
    }
    return skip_value(p, end, 2);
}

typedef struct {
    int seen_messages;
} Chat;

static Ptr chat_messages(Ptr p, Ptr end) {
    int assistant = 0;
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') return NULL; /* empty */
    for (;;) {
        Message m = {0, 0};
        if ((p = scan_object(p, end, &m, message_member)) == NULL) return NULL;
        if ((m.seen & (SEEN_ROLE | SEEN_CONTENT)) != (SEEN_ROLE | SEEN_CONTENT)) return NULL;
        if (m.seen & SEEN_WEIGHT && !m.assistant) return NULL;
        assistant |= m.assistant;
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == ']') return assistant ? p + 1 : NULL;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
}

static Ptr chat_member(void *ctx, const Str *key, Ptr p, Ptr end) {
    Chat *c = ctx;
    if (key_is(key, "messages")) {
        if (c->seen_messages) return NULL;
        c->seen_messages = 1;
        return chat_messages(p, end);
    }
    /* keys of the other formats: the reference path words the error */
    if (key_is(key, "prompt") || key_is(key, "completion") || key_is(key, "input") ||
        key_is(key, "preferred_output") || key_is(key, "non_preferred_output"))
        return NULL;
    return skip_value(p, end, 1);
}

/* --- completion: {"prompt": "...", "completion": "... (not blank)", ...} --- */
typedef struct {
    int prompt, completion;
} Completion;

static Ptr completion_member(void *ctx, const Str *key, Ptr p, Ptr end) {
    Completion *c = ctx;
    Str s;
    int *seen = key_is(key, "prompt") ? &c->prompt : key_is(key, "completion") ? &c->completion : NULL;
    if (seen) {
        if (*seen || p >= end || *p != '"' || (p = scan_string(p, end, &s)) == NULL) return NULL;
        if (seen == &c->completion && !s.visible) return NULL; /* maybe blank: the reference path decides */
        *seen = 1;
        return p;
    }
    if (key_is(key, "messages") || key_is(key, "input") || key_is(key, "preferred_output") ||
        key_is(key, "non_preferred_output"))
        return NULL;
    return skip_value(p, end, 1);
}

/* 1: an example; 0: a blank line; -1: UNSURE. */
static int check_line(Ptr p, Ptr end, int format) {
    p = skip_ws(p, end);
    if (p == end) return 0;
    if (format == CHAT) {
        Chat c = {0};
        if ((p = scan_object(p, end, &c, chat_member)) == NULL || !c.seen_messages) return -1;
    } else {
        Completion c = {0, 0};
        if ((p = scan_object(p, end, &c, completion_member)) == NULL || !c.prompt || !c.completion) return -1;
    }
    return skip_ws(p, end) == end ? 1 : -1;
}

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t start, stop, max_line;
    int format;
    if (!PyArg_ParseTuple(args, "y*nnin", &buf, &start, &stop, &format, &max_line)) return NULL;
    if (format != CHAT && format != COMPLETION) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "format: 1 (chat) or 2 (completion)");
        return NULL;
    }
    if (start < 0 || start > stop || stop > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "start and end: 0 <= start <= end <= len(data)");
        return NULL;
    }
    Ptr base = buf.buf, p = base + start, end = base + stop;
    Py_ssize_t lines = 0, examples = 0;
    int status = DONE;
    Py_BEGIN_ALLOW_THREADS
    while (p < end) {
        Ptr nl = memchr(p, '\n', end - p);
        Ptr line_end = nl ? nl : end;
        if (line_end - p > max_line) { status = TOO_LONG; break; }
        int verdict = check_line(p, line_end, format);
        if (verdict < 0) { status = UNSURE; break; }
        lines++;
        examples += verdict;
        p = nl ? nl + 1 : end;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return Py_BuildValue("(nnni)", lines, examples, (Py_ssize_t)(p - base), status);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "scan(data, start, end, format, max_line_bytes) -> (lines, examples, stop, status)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_linescan", NULL, -1, methods};

PyMODINIT_FUNC PyInit__linescan(void) {
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "DONE", DONE) || PyModule_AddIntConstant(m, "UNSURE", UNSURE) ||
        PyModule_AddIntConstant(m, "TOO_LONG", TOO_LONG) || PyModule_AddIntConstant(m, "CHAT", CHAT) ||
        PyModule_AddIntConstant(m, "COMPLETION", COMPLETION)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
