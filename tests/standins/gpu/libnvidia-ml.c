/*
 * STAND-IN libnvidia-ml.so.1 -- for gpufleet's tests and its lab only, NEVER on a real fleet.
 *
 * It is not NVIDIA's NVML. It answers, with NVML's real C ABI and return codes, exactly the
 * NVML calls that NVIDIA's pynvml (nvidia-ml-py) makes for gpufleet's NVML probe
 * (operations/driver/nvml_probe.py), so the real pynvml loads it through ctypes as it would
 * load the driver's library on a real host. The answers come from a JSON description of the
 * host's GPUs: the file named by $GPUFLEET_STANDIN_GPUS, else /etc/gpufleet-standin/gpus.json
 * (its shape: tests/standins/gpu/README.md). The descriptions shipped beside this file are
 * modelled on a real H100 host recorded in issue 16: driver 580.159.04, CUDA 13.0,
 * persistence and ECC on, 0 uncorrected errors, retired pages NotSupported (H100 remaps rows:
 * 0 remapped, 0 pending), PCIe gen5 x16, no NVLink, no fabric, MIG disabled.
 *
 * Behaviour, as NVML's:
 *   - nvmlInitWithFlags reads the description (reference counted with nvmlShutdown); no
 *     description file: NVML_ERROR_DRIVER_NOT_LOADED; a malformed one: NVML_ERROR_UNKNOWN,
 *     with the reason on stderr. Any call before init: NVML_ERROR_UNINITIALIZED.
 *   - A field a GPU lists in "unsupported": NVML_ERROR_NOT_SUPPORTED; in "broken":
 *     NVML_ERROR_UNKNOWN. Bad handles, indexes, enums or NULL pointers:
 *     NVML_ERROR_INVALID_ARGUMENT. A buffer too small: NVML_ERROR_INSUFFICIENT_SIZE.
 *   - Refuses to start where a real NVIDIA driver is present (/dev/nvidiactl is a character
 *     device): a stand-in must never answer for a real GPU.
 * Functions pynvml would resolve and this file lacks give pynvml's FUNCTION_NOT_FOUND.
 */

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define EXPORT __attribute__((visibility("default")))

/* nvmlReturn_t (nvml.h) */
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_UNKNOWN = 999,
};
typedef int nvmlReturn_t;
typedef unsigned int nvmlEnableState_t;

#define DEFAULT_PATH "/etc/gpufleet-standin/gpus.json"
#define MAX_GPUS 64
#define MAX_LINKS 36 /* NVML_NVLINK_MAX_LINKS */
#define MAX_TEXT 128
#define MAX_FILE (4 << 20)
#define MAX_DEPTH 16
#define NVIDIA_VENDOR 0x10DEu

/* ------------------------------------------------------------------ a strict JSON reader */

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct jnode {
    enum jtype type;
    int boolean;
    int integral;            /* J_NUM: written as an integer (no fraction, no exponent) */
    long long integer;       /* J_NUM when integral */
    char *text;              /* J_STR */
    char *key;               /* member name, inside an object */
    struct jnode *child;     /* J_ARR, J_OBJ: first element */
    struct jnode *next;      /* next sibling */
    size_t count;            /* J_ARR, J_OBJ: number of children */
} jnode;

typedef struct {
    const char *s;
    size_t pos, len;
    char error[160];
} jparser;

static void jfree(jnode *node)
{
    while (node) {
        jnode *next = node->next;
        jfree(node->child);
        free(node->text);
        free(node->key);
        free(node);
        node = next;
    }
}

static int jfail(jparser *p, const char *what)
{
    if (!p->error[0])
        snprintf(p->error, sizeof p->error, "%s at byte %zu", what, p->pos);
    return -1;
}

static void jspace(jparser *p)
{
    while (p->pos < p->len && p->s[p->pos] && strchr(" \t\r\n", p->s[p->pos]))
        p->pos++;
}

static int jliteral(jparser *p, const char *word)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return jfail(p, "unexpected character");
    p->pos += n;
    return 0;
}

static int hex4(jparser *p, unsigned *out)
{
    unsigned value = 0;
    for (int i = 0; i < 4; i++) {
        if (p->pos >= p->len || !isxdigit((unsigned char)p->s[p->pos]))
            return jfail(p, "bad \\u escape");
        char c = p->s[p->pos++];
        value = value * 16 + (unsigned)(isdigit((unsigned char)c) ? c - '0' : (tolower(c) - 'a' + 10));
    }
    *out = value;
    return 0;
}

static size_t utf8(unsigned code, char *out)
{
    if (code < 0x80) { out[0] = (char)code; return 1; }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | (code >> 6)); out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | (code >> 12)); out[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (code >> 18)); out[1] = (char)(0x80 | ((code >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((code >> 6) & 0x3F)); out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

/* A string at p->pos (the opening quote), decoded into a fresh NUL-terminated buffer. */
static char *jstring(jparser *p)
{
    p->pos++; /* the quote */
    char *out = malloc(p->len - p->pos + 1); /* decoding never grows the text */
    size_t n = 0;
    if (!out) { jfail(p, "out of memory"); return NULL; }
    for (;;) {
        if (p->pos >= p->len) { jfail(p, "unterminated string"); break; }
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c == '"') { out[n] = '\0'; return out; }
        if (c < 0x20) { jfail(p, "control character in a string"); break; }
        if (c != '\\') { out[n++] = (char)c; continue; }
        if (p->pos >= p->len) { jfail(p, "unterminated string"); break; }
        c = (unsigned char)p->s[p->pos++];
        const char *plain = strchr("\"\\/bfnrt", c);
        if (c && plain) { out[n++] = "\"\\/\b\f\n\r\t"[plain - "\"\\/bfnrt"]; continue; }
        if (c != 'u') { jfail(p, "bad escape"); break; }
        unsigned code, low;
        if (hex4(p, &code)) break;
        if (code >= 0xDC00 && code <= 0xDFFF) { jfail(p, "lone low surrogate"); break; }
        if (code >= 0xD800 && code <= 0xDBFF) {
            if (p->len - p->pos < 2 || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                jfail(p, "lone high surrogate"); break;
            }
            p->pos += 2;
            if (hex4(p, &low)) break;
            if (low < 0xDC00 || low > 0xDFFF) { jfail(p, "bad surrogate pair"); break; }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        }
        if (code == 0) { jfail(p, "NUL in a string"); break; }
        n += utf8(code, out + n); /* at most 4 bytes for the 6 or 12 read */
    }
    free(out);
    return NULL;
}

static int jnumber(jparser *p, jnode *node)
{
    size_t start = p->pos;
    int integral = 1;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos >= p->len || !isdigit((unsigned char)p->s[p->pos])) return jfail(p, "bad number");
    if (p->s[p->pos] == '0') p->pos++;
    else while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos])) p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '.') {
        integral = 0; p->pos++;
        if (p->pos >= p->len || !isdigit((unsigned char)p->s[p->pos])) return jfail(p, "bad number");
        while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos])) p->pos++;
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        integral = 0; p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (p->pos >= p->len || !isdigit((unsigned char)p->s[p->pos])) return jfail(p, "bad number");
        while (p->pos < p->len && isdigit((unsigned char)p->s[p->pos])) p->pos++;
    }
    node->type = J_NUM;
    node->integral = integral;
    if (integral) {
        char digits[32];
        size_t n = p->pos - start;
        if (n >= sizeof digits) return jfail(p, "number out of range");
        memcpy(digits, p->s + start, n);
        digits[n] = '\0';
        errno = 0;
        node->integer = strtoll(digits, NULL, 10);
        if (errno == ERANGE) return jfail(p, "number out of range");
    }
    return 0;
}

static jnode *jvalue(jparser *p, int depth);

static int jitems(jparser *p, jnode *node, int depth, char close, int members)
{
    jnode **tail = &node->child;
    p->pos++; /* [ or { */
    jspace(p);
    if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
    for (;;) {
        char *key = NULL;
        jspace(p);
        if (members) {
            if (p->pos >= p->len || p->s[p->pos] != '"') return jfail(p, "expected a member name");
            if (!(key = jstring(p))) return -1;
            for (jnode *seen = node->child; seen; seen = seen->next)
                if (strcmp(seen->key, key) == 0) { free(key); return jfail(p, "duplicate member"); }
            jspace(p);
            if (p->pos >= p->len || p->s[p->pos] != ':') { free(key); return jfail(p, "expected ':'"); }
            p->pos++;
        }
        jnode *item = jvalue(p, depth + 1);
        if (!item) { free(key); return -1; }
        item->key = key;
        *tail = item;
        tail = &item->next;
        node->count++;
        jspace(p);
        if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; return 0; }
        return jfail(p, members ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static jnode *jvalue(jparser *p, int depth)
{
    jnode *node = calloc(1, sizeof *node);
    int failed = 0;
    if (!node) { jfail(p, "out of memory"); return NULL; }
    if (depth > MAX_DEPTH) { jfail(p, "nested too deeply"); free(node); return NULL; }
    jspace(p);
    char c = p->pos < p->len ? p->s[p->pos] : '\0';
    if (c == '{') { node->type = J_OBJ; failed = jitems(p, node, depth, '}', 1); }
    else if (c == '[') { node->type = J_ARR; failed = jitems(p, node, depth, ']', 0); }
    else if (c == '"') { node->type = J_STR; failed = !(node->text = jstring(p)); }
    else if (c == 't') { node->type = J_BOOL; node->boolean = 1; failed = jliteral(p, "true"); }
    else if (c == 'f') { node->type = J_BOOL; failed = jliteral(p, "false"); }
    else if (c == 'n') { node->type = J_NULL; failed = jliteral(p, "null"); }
    else if (c == '-' || isdigit((unsigned char)c)) failed = jnumber(p, node);
    else failed = jfail(p, p->pos < p->len ? "unexpected character" : "unexpected end");
    if (failed) { jfree(node); return NULL; }
    return node;
}

static jnode *jparse(const char *text, size_t len, char *error, size_t error_size)
{
    jparser p = {.s = text, .len = len};
    jnode *root = NULL;
    if (memchr(text, '\0', len)) jfail(&p, "NUL byte in the file");
    else if ((root = jvalue(&p, 0))) {
        jspace(&p);
        if (p.pos != p.len) { jfail(&p, "trailing characters"); jfree(root); root = NULL; }
    }
    if (!root) snprintf(error, error_size, "%s", p.error);
    return root;
}

static jnode *jget(const jnode *object, const char *key)
{
    for (jnode *item = object->child; item; item = item->next)
        if (strcmp(item->key, key) == 0) return item;
    return NULL;
}

/* ------------------------------------------------------------ the description, as a model */

enum field {
    F_NAME, F_UUID, F_PCI_BUS_ID, F_VBIOS, F_PERSISTENCE, F_ECC_MODE, F_ECC_VOLATILE,
    F_ECC_AGGREGATE, F_RETIRED_PAGES_PENDING, F_REMAPPED_ROWS, F_PCIE_GEN, F_PCIE_MAX_GEN,
    F_PCIE_WIDTH, F_PCIE_MAX_WIDTH, F_PCIE_REPLAYS, F_THROTTLE_REASONS, F_TEMPERATURE_C,
    F_SLOWDOWN_C, F_POWER_MW, F_POWER_LIMIT_MW, F_NVLINKS, F_FABRIC, F_MIG_MODE,
    F_REQUIRED, /* the fields above: present, "unsupported" or "broken" in every GPU */
    F_PCI_DEVICE_ID = F_REQUIRED, F_PCI_SUBSYSTEM_ID, F_ECC_CORRECTED_VOLATILE,
    F_ECC_CORRECTED_AGGREGATE, F_SHUTDOWN_C,
    F_COUNT,
};

enum kind { K_TEXT, K_UINT, K_U64, K_PAIR, K_QUAD, K_LINKS, K_FABRIC, K_HEX };

static const struct { const char *name; enum kind kind; } FIELDS[F_COUNT] = {
    [F_NAME] = {"name", K_TEXT},
    [F_UUID] = {"uuid", K_TEXT},
    [F_PCI_BUS_ID] = {"pci_bus_id", K_TEXT},
    [F_VBIOS] = {"vbios", K_TEXT},
    [F_PERSISTENCE] = {"persistence", K_UINT},
    [F_ECC_MODE] = {"ecc_mode", K_PAIR},
    [F_ECC_VOLATILE] = {"ecc_volatile", K_U64},
    [F_ECC_AGGREGATE] = {"ecc_aggregate", K_U64},
    [F_RETIRED_PAGES_PENDING] = {"retired_pages_pending", K_UINT},
    [F_REMAPPED_ROWS] = {"remapped_rows", K_QUAD},
    [F_PCIE_GEN] = {"pcie_gen", K_UINT},
    [F_PCIE_MAX_GEN] = {"pcie_max_gen", K_UINT},
    [F_PCIE_WIDTH] = {"pcie_width", K_UINT},
    [F_PCIE_MAX_WIDTH] = {"pcie_max_width", K_UINT},
    [F_PCIE_REPLAYS] = {"pcie_replays", K_UINT},
    [F_THROTTLE_REASONS] = {"throttle_reasons", K_U64},
    [F_TEMPERATURE_C] = {"temperature_c", K_UINT},
    [F_SLOWDOWN_C] = {"slowdown_c", K_UINT},
    [F_POWER_MW] = {"power_mw", K_UINT},
    [F_POWER_LIMIT_MW] = {"power_limit_mw", K_UINT},
    [F_NVLINKS] = {"nvlinks", K_LINKS},
    [F_FABRIC] = {"fabric", K_FABRIC},
    [F_MIG_MODE] = {"mig_mode", K_PAIR},
    [F_PCI_DEVICE_ID] = {"pci_device_id", K_HEX},
    [F_PCI_SUBSYSTEM_ID] = {"pci_subsystem_id", K_HEX},
    [F_ECC_CORRECTED_VOLATILE] = {"ecc_corrected_volatile", K_U64},
    [F_ECC_CORRECTED_AGGREGATE] = {"ecc_corrected_aggregate", K_U64},
    [F_SHUTDOWN_C] = {"shutdown_c", K_UINT},
};

/* GPU members other readers of the description use (the stand-in nvidia-smi, the lab's
 * sysfs tree): allowed here, not read. */
static const char *const GPU_OTHER_KEYS[] = {"pci_class", "memory_total_mib", "unsupported",
                                             "broken", NULL};
static const char *const TOP_KEYS[] = {"about", "driver", "cuda_driver", "module_version",
                                       "gpus", "kernel_log", "pci_devices", NULL};

enum state { S_ABSENT, S_VALUE, S_UNSUPPORTED, S_BROKEN };

typedef struct gpu {
    enum state state[F_COUNT];
    char text[F_COUNT][MAX_TEXT];
    unsigned long long number[F_COUNT];
    unsigned pair[F_COUNT][2];
    unsigned rows[4];
    unsigned links[MAX_LINKS];
    unsigned link_count;
    unsigned fabric_state, fabric_status, fabric_clique;
    unsigned domain, bus, device, function;
} gpu_t;

static struct {
    unsigned refcount;
    char driver[MAX_TEXT];
    int cuda_driver;
    unsigned count;
    gpu_t gpus[MAX_GPUS];
} host;

static void complain(const char *path, const char *format, ...)
{
    va_list args;
    fprintf(stderr, "gpufleet STAND-IN libnvidia-ml: %s: ", path);
    va_start(args, format);
    vfprintf(stderr, format, args);
    va_end(args);
    fputc('\n', stderr);
}

static int listed(const char *const *names, const char *key)
{
    for (; *names; names++)
        if (strcmp(*names, key) == 0) return 1;
    return 0;
}

static int field_named(const char *key)
{
    for (int f = 0; f < F_COUNT; f++)
        if (strcmp(FIELDS[f].name, key) == 0) return f;
    return -1;
}

static int unsigned_value(const jnode *node, unsigned long long max, unsigned long long *out)
{
    if (node->type == J_BOOL) { *out = (unsigned)node->boolean; return 0; }
    if (node->type != J_NUM || !node->integral || node->integer < 0 ||
        (unsigned long long)node->integer > max)
        return -1;
    *out = (unsigned long long)node->integer;
    return 0;
}

static int unsigned_list(const jnode *node, unsigned *out, size_t n)
{
    unsigned long long value;
    const jnode *item = node->child;
    if (node->type != J_ARR || node->count != n) return -1;
    for (size_t i = 0; i < n; i++, item = item->next) {
        if (unsigned_value(item, UINT32_MAX, &value)) return -1;
        out[i] = (unsigned)value;
    }
    return 0;
}

/* Sets the GPU's field from its JSON value; -1 with *why set when the value is malformed. */
static int read_field(gpu_t *gpu, int f, const jnode *node, const char **why)
{
    unsigned long long value;
    switch (FIELDS[f].kind) {
    case K_TEXT:
        *why = "a string shorter than 128 bytes";
        if (node->type != J_STR || strlen(node->text) >= MAX_TEXT) return -1;
        snprintf(gpu->text[f], MAX_TEXT, "%s", node->text);
        return 0;
    case K_HEX: {
        char *end;
        *why = "a hexadecimal string such as \"0x2330\"";
        if (node->type != J_STR || strncmp(node->text, "0x", 2) != 0 || !node->text[2]) return -1;
        errno = 0;
        value = strtoull(node->text + 2, &end, 16);
        if (*end || errno || value > 0xFFFFFFFFull) return -1;
        gpu->number[f] = value;
        return 0;
    }
    case K_UINT:
    case K_U64:
        *why = FIELDS[f].kind == K_UINT ? "an unsigned 32-bit integer" : "an unsigned integer";
        if (unsigned_value(node, FIELDS[f].kind == K_UINT ? UINT32_MAX : INT64_MAX, &value))
            return -1;
        gpu->number[f] = value;
        return 0;
    case K_PAIR:
        *why = "a list of 2 unsigned integers [current, pending]";
        return unsigned_list(node, gpu->pair[f], 2);
    case K_QUAD:
        *why = "a list of 4 unsigned integers [correctable, uncorrectable, pending, failure]";
        return unsigned_list(node, gpu->rows, 4);
    case K_LINKS:
        *why = "a list of at most 36 booleans (one per NVLink, true = up)";
        if (node->type != J_ARR || node->count > MAX_LINKS) return -1;
        gpu->link_count = 0;
        for (const jnode *item = node->child; item; item = item->next) {
            if (item->type != J_BOOL) return -1;
            gpu->links[gpu->link_count++] = (unsigned)item->boolean;
        }
        return 0;
    case K_FABRIC: {
        *why = "an object {\"state\": 0-3, \"status\": an NVML return code, \"clique_id\": n}";
        if (node->type != J_OBJ) return -1;
        for (const jnode *item = node->child; item; item = item->next) {
            if (unsigned_value(item, UINT32_MAX, &value)) return -1;
            if (strcmp(item->key, "state") == 0) {
                if (value > 3) return -1; /* NVML_GPU_FABRIC_STATE_* */
                gpu->fabric_state = (unsigned)value;
            } else if (strcmp(item->key, "status") == 0) {
                gpu->fabric_status = (unsigned)value;
            } else if (strcmp(item->key, "clique_id") == 0) {
                gpu->fabric_clique = (unsigned)value;
            } else {
                return -1;
            }
        }
        if (!jget(node, "state") || !jget(node, "status")) return -1;
        return 0;
    }
    }
    return -1;
}

static int mark(gpu_t *gpu, const jnode *list, enum state state, const char *path, unsigned index)
{
    const char *name = state == S_UNSUPPORTED ? "unsupported" : "broken";
    if (list->type != J_ARR) {
        complain(path, "gpus[%u].%s: expected a list of field names", index, name);
        return -1;
    }
    for (const jnode *item = list->child; item; item = item->next) {
        int f = item->type == J_STR ? field_named(item->text) : -1;
        if (f < 0) {
            complain(path, "gpus[%u].%s: not a field name: %s", index, name,
                     item->type == J_STR ? item->text : "(not a string)");
            return -1;
        }
        if (gpu->state[f] == S_UNSUPPORTED || gpu->state[f] == S_BROKEN) {
            complain(path, "gpus[%u]: %s listed twice", index, item->text);
            return -1;
        }
        gpu->state[f] = state;
    }
    return 0;
}

static int read_gpu(gpu_t *gpu, const jnode *object, const char *path, unsigned index)
{
    const char *why = "";
    memset(gpu, 0, sizeof *gpu);
    if (object->type != J_OBJ) {
        complain(path, "gpus[%u]: expected an object", index);
        return -1;
    }
    for (const jnode *item = object->child; item; item = item->next) {
        if (field_named(item->key) < 0 && !listed(GPU_OTHER_KEYS, item->key)) {
            complain(path, "gpus[%u]: unknown member \"%s\"", index, item->key);
            return -1;
        }
    }
    const jnode *list;
    if ((list = jget(object, "unsupported")) && mark(gpu, list, S_UNSUPPORTED, path, index))
        return -1;
    if ((list = jget(object, "broken")) && mark(gpu, list, S_BROKEN, path, index)) return -1;
    for (int f = 0; f < F_COUNT; f++) {
        const jnode *node = jget(object, FIELDS[f].name);
        if (node && gpu->state[f] != S_ABSENT) {
            complain(path, "gpus[%u].%s: has a value and is listed as unsupported or broken",
                     index, FIELDS[f].name);
            return -1;
        }
        if (node) {
            if (read_field(gpu, f, node, &why)) {
                complain(path, "gpus[%u].%s: expected %s", index, FIELDS[f].name, why);
                return -1;
            }
            gpu->state[f] = S_VALUE;
        } else if (f < F_REQUIRED && gpu->state[f] == S_ABSENT) {
            complain(path, "gpus[%u]: missing \"%s\" (give a value, or list it in "
                           "\"unsupported\")", index, FIELDS[f].name);
            return -1;
        }
    }
    if (gpu->state[F_PCI_BUS_ID] == S_VALUE) {
        char end;
        if (strlen(gpu->text[F_PCI_BUS_ID]) != 16 ||
            sscanf(gpu->text[F_PCI_BUS_ID], "%8x:%2x:%2x.%1x%c", &gpu->domain, &gpu->bus,
                   &gpu->device, &gpu->function, &end) != 4) {
            complain(path, "gpus[%u].pci_bus_id: expected DDDDDDDD:BB:DD.F, got \"%s\"", index,
                     gpu->text[F_PCI_BUS_ID]);
            return -1;
        }
    }
    if (gpu->state[F_PCI_DEVICE_ID] == S_ABSENT) { /* H100 SXM5 80GB */
        gpu->state[F_PCI_DEVICE_ID] = S_VALUE;
        gpu->number[F_PCI_DEVICE_ID] = 0x2330;
    }
    return 0;
}

static int read_host(const char *path, const jnode *root)
{
    unsigned long long value;
    if (root->type != J_OBJ) {
        complain(path, "expected an object at the top");
        return -1;
    }
    for (const jnode *item = root->child; item; item = item->next) {
        if (!listed(TOP_KEYS, item->key)) {
            complain(path, "unknown member \"%s\"", item->key);
            return -1;
        }
    }
    const jnode *driver = jget(root, "driver"), *cuda = jget(root, "cuda_driver");
    const jnode *gpus = jget(root, "gpus");
    if (!driver || driver->type != J_STR || !driver->text[0] || strlen(driver->text) >= MAX_TEXT) {
        complain(path, "\"driver\": expected a version string such as \"580.159.04\"");
        return -1;
    }
    if (!cuda || unsigned_value(cuda, INT32_MAX, &value) || cuda->type != J_NUM) {
        complain(path, "\"cuda_driver\": expected an integer such as 13000 (CUDA 13.0)");
        return -1;
    }
    if (!gpus || gpus->type != J_ARR || gpus->count > MAX_GPUS) {
        complain(path, "\"gpus\": expected a list of at most %d GPU objects", MAX_GPUS);
        return -1;
    }
    snprintf(host.driver, sizeof host.driver, "%s", driver->text);
    host.cuda_driver = (int)value;
    host.count = 0;
    for (const jnode *item = gpus->child; item; item = item->next, host.count++)
        if (read_gpu(&host.gpus[host.count], item, path, host.count)) return -1;
    return 0;
}

static nvmlReturn_t load(void)
{
    const char *path = getenv("GPUFLEET_STANDIN_GPUS");
    struct stat info;
    char error[200];
    if (!path || !*path) path = DEFAULT_PATH;
    if (stat("/dev/nvidiactl", &info) == 0 && S_ISCHR(info.st_mode)) {
        complain("/dev/nvidiactl", "a real NVIDIA driver is present: the stand-in refuses");
        return NVML_ERROR_UNKNOWN;
    }
    FILE *file = fopen(path, "rb");
    if (!file) {
        if (errno != ENOENT) complain(path, "%s", strerror(errno));
        return errno == ENOENT ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_ERROR_UNKNOWN;
    }
    char *text = malloc(MAX_FILE + 1);
    size_t len = text ? fread(text, 1, MAX_FILE + 1, file) : 0;
    int failed = !text || ferror(file) || len > MAX_FILE;
    fclose(file);
    if (failed) {
        complain(path, "unreadable, or larger than %d bytes", MAX_FILE);
        free(text);
        return NVML_ERROR_UNKNOWN;
    }
    jnode *root = jparse(text, len, error, sizeof error);
    free(text);
    if (!root) {
        complain(path, "not JSON: %s", error);
        return NVML_ERROR_UNKNOWN;
    }
    failed = read_host(path, root);
    jfree(root);
    if (failed) memset(&host, 0, sizeof host);
    return failed ? NVML_ERROR_UNKNOWN : NVML_SUCCESS;
}

/* ------------------------------------------------------------------------- the NVML API */

typedef struct gpu *nvmlDevice_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned char clusterUuid[16];
    nvmlReturn_t status;
    unsigned int cliqueId;
    unsigned int state;
} nvmlGpuFabricInfo_t;

/* The GPU behind a handle, or NULL for anything that is not one of ours. */
static gpu_t *gpu_of(nvmlDevice_t device)
{
    uintptr_t at = (uintptr_t)device, first = (uintptr_t)host.gpus;
    if (!host.refcount || at < first || at >= first + host.count * sizeof(gpu_t) ||
        (at - first) % sizeof(gpu_t))
        return NULL;
    return device;
}

/* Checks common to every device call: initialized, a good handle and output, the field's
 * state. On NVML_SUCCESS, *out is the GPU. */
static nvmlReturn_t device_field(nvmlDevice_t device, const void *output, int f, gpu_t **out)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (!(*out = gpu_of(device)) || !output) return NVML_ERROR_INVALID_ARGUMENT;
    switch ((*out)->state[f]) {
    case S_VALUE: return NVML_SUCCESS;
    case S_BROKEN: return NVML_ERROR_UNKNOWN;
    default: return NVML_ERROR_NOT_SUPPORTED;
    }
}

static nvmlReturn_t copy_text(const char *text, char *buffer, unsigned int length)
{
    if (!buffer) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buffer, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t device_text(nvmlDevice_t device, int f, char *buffer, unsigned int length)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, buffer, f, &gpu);
    return ret ? ret : copy_text(gpu->text[f], buffer, length);
}

static nvmlReturn_t device_uint(nvmlDevice_t device, int f, unsigned int *value)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, value, f, &gpu);
    if (!ret) *value = (unsigned int)gpu->number[f];
    return ret;
}

static nvmlReturn_t device_pair(nvmlDevice_t device, int f, unsigned int *current,
                                unsigned int *pending)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, pending ? (const void *)current : NULL, f, &gpu);
    if (!ret) { *current = gpu->pair[f][0]; *pending = gpu->pair[f][1]; }
    return ret;
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    if (host.refcount) { host.refcount++; return NVML_SUCCESS; }
    nvmlReturn_t ret = load();
    if (!ret) host.refcount = 1;
    return ret;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (--host.refcount == 0) memset(&host, 0, sizeof host);
    return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 15: return "GPU is lost";
    case 999: return "Unknown Error";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    return copy_text(host.driver, version, length);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = host.cuda_driver;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    return nvmlSystemGetCudaDriverVersion(version);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = host.count;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= host.count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &host.gpus[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    return device_text(device, F_NAME, name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    return device_text(device, F_UUID, uuid, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetVbiosVersion(nvmlDevice_t device, char *version,
                                              unsigned int length)
{
    return device_text(device, F_VBIOS, version, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, pci, F_PCI_BUS_ID, &gpu);
    if (ret) return ret;
    memset(pci, 0, sizeof *pci);
    memcpy(pci->busId, gpu->text[F_PCI_BUS_ID], 17); /* 16 characters, checked on reading */
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x",
             gpu->domain & 0xFFFFu, gpu->bus & 0xFFu, gpu->device & 0xFFu, gpu->function & 7u);
    pci->domain = gpu->domain;
    pci->bus = gpu->bus;
    pci->device = gpu->device;
    pci->pciDeviceId = ((unsigned)gpu->number[F_PCI_DEVICE_ID] << 16) | NVIDIA_VENDOR;
    pci->pciSubSystemId = (unsigned)gpu->number[F_PCI_SUBSYSTEM_ID];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode)
{
    return device_uint(device, F_PERSISTENCE, mode);
}

EXPORT nvmlReturn_t nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current,
                                         nvmlEnableState_t *pending)
{
    return device_pair(device, F_ECC_MODE, current, pending);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, unsigned int error_type,
                                                unsigned int counter_type,
                                                unsigned long long *count)
{
    static const int COUNTERS[2][2] = {
        {F_ECC_CORRECTED_VOLATILE, F_ECC_CORRECTED_AGGREGATE},
        {F_ECC_VOLATILE, F_ECC_AGGREGATE},
    };
    gpu_t *gpu;
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (error_type > 1 || counter_type > 1) return NVML_ERROR_INVALID_ARGUMENT;
    int f = COUNTERS[error_type][counter_type];
    nvmlReturn_t ret = device_field(device, count, F_ECC_MODE, &gpu);
    if (ret) return ret;
    if (!gpu->pair[F_ECC_MODE][0]) return NVML_ERROR_NOT_SUPPORTED; /* needs ECC enabled */
    if (gpu->state[f] == S_ABSENT && error_type == 0) { *count = 0; return NVML_SUCCESS; }
    if ((ret = device_field(device, count, f, &gpu))) return ret;
    *count = gpu->number[f];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                           nvmlEnableState_t *pending)
{
    return device_uint(device, F_RETIRED_PAGES_PENDING, pending);
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *correctable,
                                              unsigned int *uncorrectable,
                                              unsigned int *pending, unsigned int *failure)
{
    gpu_t *gpu;
    int all = correctable && uncorrectable && pending && failure;
    nvmlReturn_t ret = device_field(device, all ? correctable : NULL, F_REMAPPED_ROWS, &gpu);
    if (ret) return ret;
    *correctable = gpu->rows[0];
    *uncorrectable = gpu->rows[1];
    *pending = gpu->rows[2];
    *failure = gpu->rows[3];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen)
{
    return device_uint(device, F_PCIE_GEN, gen);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkGeneration(nvmlDevice_t device, unsigned int *gen)
{
    return device_uint(device, F_PCIE_MAX_GEN, gen);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrPcieLinkWidth(nvmlDevice_t device, unsigned int *width)
{
    return device_uint(device, F_PCIE_WIDTH, width);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxPcieLinkWidth(nvmlDevice_t device, unsigned int *width)
{
    return device_uint(device, F_PCIE_MAX_WIDTH, width);
}

EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value)
{
    return device_uint(device, F_PCIE_REPLAYS, value);
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                           unsigned long long *reasons)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, reasons, F_THROTTLE_REASONS, &gpu);
    if (!ret) *reasons = gpu->number[F_THROTTLE_REASONS];
    return ret;
}

EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                              unsigned long long *reasons)
{
    return nvmlDeviceGetCurrentClocksEventReasons(device, reasons);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor,
                                             unsigned int *temperature)
{
    if (host.refcount && sensor != 0) return NVML_ERROR_INVALID_ARGUMENT; /* GPU die only */
    return device_uint(device, F_TEMPERATURE_C, temperature);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device,
                                                      unsigned int threshold,
                                                      unsigned int *temperature)
{
    if (!host.refcount) return NVML_ERROR_UNINITIALIZED;
    if (threshold == 0) return device_uint(device, F_SHUTDOWN_C, temperature);
    if (threshold == 1) return device_uint(device, F_SLOWDOWN_C, temperature);
    if (!gpu_of(device) || !temperature || threshold > 16) return NVML_ERROR_INVALID_ARGUMENT;
    return NVML_ERROR_NOT_SUPPORTED; /* memory, GPU max, acoustic...: not described */
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    return device_uint(device, F_POWER_MW, power);
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return device_uint(device, F_POWER_LIMIT_MW, limit);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                             nvmlEnableState_t *active)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, active, F_NVLINKS, &gpu);
    if (ret) return ret;
    if (!gpu->link_count) return NVML_ERROR_NOT_SUPPORTED; /* a GPU without NVLink */
    if (link >= gpu->link_count) return NVML_ERROR_INVALID_ARGUMENT;
    *active = gpu->links[link];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfo(nvmlDevice_t device, nvmlGpuFabricInfo_t *info)
{
    gpu_t *gpu;
    nvmlReturn_t ret = device_field(device, info, F_FABRIC, &gpu);
    if (ret) return ret;
    memset(info, 0, sizeof *info);
    info->state = gpu->fabric_state;
    info->status = (nvmlReturn_t)gpu->fabric_status;
    info->cliqueId = gpu->fabric_clique;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                         unsigned int *pending)
{
    return device_pair(device, F_MIG_MODE, current, pending);
}
