/*
 * A fuzz driver for the module's table reader and attempt path, built with AddressSanitizer
 * and UBSan together with extproc_module.c compiled -DEXTPROC_MODULE_FUZZ
 * (tests/module/test_fuzz.py). AddressSanitizer cannot run inside the wheel's Envoy, so this
 * plays Envoy: it defines the callbacks the module calls, calls the module's hooks as Envoy
 * would, and between requests writes valid entries, random bytes, wild fields and torn
 * seqlocks into the region (heap memory of exactly the region's size, so any access past it
 * is reported). Each request runs the filter's hooks and then, as the router's upstream log
 * does, the access logger's log hook for each of its attempts (none to three), with a status,
 * flags and a host that are sometimes the override, sometimes another, sometimes garbage.
 * Checks: every override the module sets passes the address rules; an override for a service
 * is one of the hosts ever written for it (random bytes that leave seq alone change an entry
 * under a snapshot the module rightly keeps: a host of an older table of that service is
 * fine, another service's host is not); a garbage cluster name gets no override; every record
 * is well-formed, and one naming a host of the snapshot names a host of that service.
 *
 * Usage: fuzz_driver SEED ITERATIONS. Prints "ok <counters>" and exits 0.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The contract's numbers, as extproc/wire.py has them. */
#define REGION_SIZE 3223552u
#define ENTRIES_OFFSET 4096u
#define ENTRY_SIZE 4384u
#define MAX_HOSTS 64u
#define HOST_SLOTS 4096u
#define RECORD_SIZE 128u

typedef struct {
  const char *ptr;
  size_t length;
} envoy_buffer;

uint8_t *extproc_fuzz_region(void);
void extproc_fuzz_set_link(int fd);
const char *envoy_dynamic_module_on_program_init(void);
const void *envoy_dynamic_module_on_http_filter_config_new(void *, envoy_buffer, envoy_buffer);
const void *envoy_dynamic_module_on_access_logger_config_new(void *, envoy_buffer, envoy_buffer);
const void *envoy_dynamic_module_on_access_logger_new(const void *, void *);
void envoy_dynamic_module_on_access_logger_log(void *, const void *, int);
const void *envoy_dynamic_module_on_http_filter_new(const void *, void *);
int envoy_dynamic_module_on_http_filter_request_headers(void *, void *, bool);
void envoy_dynamic_module_on_http_filter_stream_complete(void *, void *);
void envoy_dynamic_module_on_http_filter_destroy(void *);

static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fail(const char *what) {
  fprintf(stderr, "fuzz_driver: %s\n", what);
  abort();
}

/* ---- The fake Envoy: one stream at a time ---------------------------------------------- */

static struct {
  char cluster[200];
  size_t cluster_len;
  bool has_cluster;
  uint32_t worker;
  bool override_ok;
  char override[64];
  size_t override_len; /* 0: none set */
  /* The attempt being logged: its own status, flags, host, and the stream's cluster. */
  uint64_t code, flags;
  bool has_code;
  char served[80];
  size_t served_len;
  bool has_upstream_cluster;
  uint32_t log_worker;
} fake;

static unsigned long overrides, refused_by_fake;

bool envoy_dynamic_module_callback_http_get_cluster_name(void *f, envoy_buffer *out) {
  (void)f;
  if (!fake.has_cluster) return false;
  *out = (envoy_buffer){fake.cluster, fake.cluster_len};
  return true;
}

static bool addr_char(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
         c == '.' || c == ':' || c == '[' || c == ']';
}

bool envoy_dynamic_module_callback_http_set_upstream_override_host(void *f, envoy_buffer host,
                                                                   bool strict) {
  (void)f;
  if (strict) fail("strict override");
  if (host.ptr == NULL || host.length == 0 || host.length > 55) fail("override length");
  for (size_t i = 0; i < host.length; i++)
    if (!addr_char(host.ptr[i])) fail("override character");
  memcpy(fake.override, host.ptr, host.length);
  fake.override_len = host.length;
  overrides++;
  if (!fake.override_ok) refused_by_fake++;
  return fake.override_ok;
}

bool envoy_dynamic_module_callback_access_logger_get_attribute_int(void *l, int id,
                                                                   uint64_t *out) {
  (void)l;
  if (id != 15 || !fake.has_code) return false;
  *out = fake.code;
  return true;
}

bool envoy_dynamic_module_callback_access_logger_get_attribute_string(void *l, int id,
                                                                      envoy_buffer *out) {
  (void)l;
  if (id != 41 || fake.served_len == 0) return false;
  *out = (envoy_buffer){fake.served, fake.served_len};
  return true;
}

uint64_t envoy_dynamic_module_callback_access_logger_get_response_flags(void *l) {
  (void)l;
  return fake.flags;
}

uint32_t envoy_dynamic_module_callback_access_logger_get_worker_index(void *l) {
  (void)l;
  return fake.log_worker;
}

bool envoy_dynamic_module_callback_access_logger_get_upstream_cluster(void *l, envoy_buffer *out) {
  (void)l;
  if (!fake.has_upstream_cluster) return false;
  *out = (envoy_buffer){fake.cluster, fake.cluster_len};
  return true;
}

uint32_t envoy_dynamic_module_callback_http_filter_get_worker_index(void *f) {
  (void)f;
  return fake.worker;
}
uint32_t envoy_dynamic_module_callback_get_concurrency(void) { return 2; }
bool envoy_dynamic_module_callback_is_validation_mode(void) { return false; }
bool envoy_dynamic_module_callback_log_enabled(int level) { return level >= 3; }
void envoy_dynamic_module_callback_log(int level, envoy_buffer m) {
  fprintf(stderr, "module log %d: %.*s\n", level, (int)m.length, m.ptr);
}

/* ---- Writing the region as a (good or bad) service would ---------------------------------- */

static const char *names[] = {"outbound|80||a.example", "outbound|80||b.example", "c",
                              "outbound|8080||d.example"};
#define N_NAMES (sizeof names / sizeof names[0])
static const char *addrs[] = {"127.0.0.1:8080", "127.0.0.2:80",  "[::1]:8080",
                              "10.1.2.3:443",   "[fe80::1]:1",   "192.168.100.200:65535",
                              "127.0.0.3:9",    "[2001:db8::42]:80"};
#define N_ADDRS (sizeof addrs / sizeof addrs[0])
#define N_SLOTS 6u /* the slots the driver writes: few, so the writes collide */

static uint8_t *region;
static uint64_t seqs[N_SLOTS];
static uint32_t history[N_NAMES]; /* bit a: addrs[a] was ever a host of names[i] */

static size_t name_index(const char *name) {
  size_t i = 0;
  while (i < N_NAMES && strcmp(names[i], name) != 0) i++;
  return i;
}

static uint8_t *entry(uint32_t slot) { return region + ENTRIES_OFFSET + slot * ENTRY_SIZE; }
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

/* A seqlocked write, as the service does it: seq + 1 (odd), the write, seq + 1 (even). The
 * next seq is past every value the slot held (random bytes included), so the module never
 * sees one seq twice with different contents. */
static void observe_seqs(void) {
  for (uint32_t s = 0; s < N_SLOTS; s++) {
    uint64_t v;
    memcpy(&v, entry(s), 8);
    if (v > seqs[s]) seqs[s] = v;
  }
}
static void seq_begin(uint32_t slot) { put64(entry(slot), seqs[slot] = (seqs[slot] + 2) | 1); }
static void seq_end(uint32_t slot) { put64(entry(slot), ++seqs[slot]); }

/* A valid entry for `name` in `slot`; the name leaves every other slot. Returns how many hosts
 * a request may be overridden to (0: withheld or none). */
static size_t write_valid(uint32_t slot, const char *name) {
  for (uint32_t s = 0; s < N_SLOTS; s++) {
    uint16_t len;
    memcpy(&len, entry(s) + 16, 2);
    if (s == slot || len != strlen(name) || memcmp(entry(s) + 112, name, len) != 0) continue;
    seq_begin(s);
    put16(entry(s) + 16, 0);
    seq_end(s);
  }
  seq_begin(slot);
  uint8_t *e = entry(slot);
  memset(e + 8, 0, ENTRY_SIZE - 8);
  put64(e + 8, rnd());
  put16(e + 16, (uint16_t)strlen(name));
  e[18] = (uint8_t)(rnd() % 3);
  e[19] = rnd() % 10 == 0 ? 1 : 0;
  size_t n = rnd() % 8 == 0 ? MAX_HOSTS : rnd() % 9;
  put32(e + 20, (uint32_t)n);
  for (int i = 0; i < 80; i++) e[24 + i] = (uint8_t)rnd();
  put32(e + 104, 2 + (uint32_t)(rnd() % 3));
  memcpy(e + 112, name, strlen(name));
  bool equal = rnd() % 2;
  for (size_t i = 0; i < n; i++) {
    uint8_t *h = e + 288 + i * 64;
    size_t pick = rnd() % N_ADDRS;
    const char *a = addrs[pick];
    history[name_index(name)] |= 1u << pick;
    put32(h, equal ? 7 : 1 + (uint32_t)(rnd() % 1000));
    put16(h + 4, (uint16_t)(rnd() % HOST_SLOTS));
    h[6] = (uint8_t)strlen(a);
    memcpy(h + 8, a, strlen(a));
  }
  seq_end(slot);
  return e[19] & 1 ? 0 : n;
}

/* An entry with the name intact and one field out of bounds: the module must refuse it. */
static void write_wild(uint32_t slot) {
  while (write_valid(slot, names[rnd() % N_NAMES]) < 4) {
  }
  seq_begin(slot);
  uint8_t *e = entry(slot);
  uint8_t *h = e + 288 + (rnd() % 4) * 64;
  uint32_t n;
  memcpy(&n, e + 20, 4);
  switch (rnd() % 11) {
    case 0: put32(e + 20, 65 + (uint32_t)(rnd() % 100000)); break;     /* n_hosts */
    case 1: put32(e + 20, 4); h[6] = (uint8_t)(56 + rnd() % 200); break; /* addr_len */
    case 2: put32(e + 20, 4); put16(h + 4, (uint16_t)(HOST_SLOTS + rnd() % 60000)); break;
    case 3: put32(e + 20, 4); put32(h, 0); break;                       /* weight 0 */
    case 4: e[18] = (uint8_t)(3 + rnd() % 250); break;                  /* lb */
    case 5: e[18] = 1; put32(e + 104, rnd() % 2 ? 0 : 65 + (uint32_t)rnd()); break;
    case 6: put32(e + 20, 2); put32(e + 288, 0xFFFFFFFFu); put32(e + 352, 2); break;
    case 7: put32(e + 20, 4); h[6] = 5; memcpy(h + 8, "a b;c", 5); break; /* charset */
    case 8: put16(e + 16, (uint16_t)(177 + rnd() % 60000)); break;      /* name_len */
    case 9: /* one past the hosts, all of them valid */
      if (n == MAX_HOSTS) put32(e + 20, MAX_HOSTS + 1);
      break;
    default: { /* an address too long for its field, made of address characters */
      uint8_t *last = e + 288 + (n - 1) * 64;
      last[6] = (uint8_t)(56 + rnd() % 200);
      memset(last + 8, '1', (size_t)(e + ENTRY_SIZE - (last + 8)));
      put32(e + 20, 1);
      memcpy(e + 288, last, 64);
      memset(e + 288 + 8, '1', 56);
      break;
    }
  }
  seq_end(slot);
}

static void write_random_bytes(void) {
  size_t len = 1 + rnd() % 512;
  size_t off = rnd() % 3 == 0 ? ENTRIES_OFFSET + (rnd() % N_SLOTS) * ENTRY_SIZE + rnd() % 64
                              : rnd() % REGION_SIZE;
  if (off >= 40 && off < 64) off = 64; /* keep the module's header counters readable */
  if (off < 40 && off + len > 40) len = 40 - off;
  if (off + len > REGION_SIZE) len = REGION_SIZE - off;
  for (size_t i = 0; i < len; i++) region[off + i] = (uint8_t)rnd();
}

/* ---- One request, as Envoy runs it ---------------------------------------------------------- */

static int link_peer = -1;
static unsigned long records;
static const void *logger; /* the module's access logger, as Envoy keeps it per thread */

static bool all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0) return false;
  return true;
}

/* Every record is well-formed; one naming a host of the snapshot (an index, a slot) names a
 * host ever written for `name`, the cluster being logged (NULL: a garbage name). */
static void check_records(const char *name) {
  uint8_t rec[RECORD_SIZE + 1];
  ssize_t n;
  while ((n = recv(link_peer, rec, sizeof rec, MSG_DONTWAIT)) > 0) {
    uint16_t index, slot, kind;
    memcpy(&index, rec + 16, 2);
    memcpy(&slot, rec + 18, 2);
    memcpy(&kind, rec + 22, 2);
    if (n != RECORD_SIZE || memcmp(rec, "EXRR", 4) != 0) fail("record size or magic");
    if (kind != 1) fail("record kind");
    if ((index == 0xFFFF) != (slot == 0xFFFF)) fail("record host index without its slot");
    if (index != 0xFFFF && (index >= MAX_HOSTS || slot >= HOST_SLOTS)) fail("record host fields");
    if (rec[48] > 55 || !all_zero(rec + 49 + rec[48], 55 - rec[48])) fail("record address");
    if (!all_zero(rec + 20, 2) || !all_zero(rec + 28, 4) || !all_zero(rec + 104, 24))
      fail("record reserved bytes");
    if (index != 0xFFFF) {
      if (name == NULL) fail("a record naming a host for a cluster no entry names");
      size_t a = 0;
      while (a < N_ADDRS && (strlen(addrs[a]) != rec[48] || memcmp(rec + 49, addrs[a], rec[48])))
        a++;
      if (a == N_ADDRS || !(history[name_index(name)] >> a & 1))
        fail("a record naming a host never written for this service");
    }
    records++;
  }
}

/* The override (if any) is one a request for `name` may get. */
static void check_override(const char *name, const char *got) {
  if (got == NULL) return;
  if (name == NULL) fail("override for a cluster no entry names");
  for (size_t a = 0; a < N_ADDRS; a++) {
    if (strcmp(got, addrs[a]) == 0 && !(history[name_index(name)] >> a & 1))
      fail("override to a host never written for this service");
  }
}

/* A request for `name` (NULL: garbage); returns the override the module set, if any. */
static const char *request(const char *name, uint32_t worker) {
  memset(&fake, 0, sizeof fake);
  fake.worker = worker;
  fake.has_cluster = rnd() % 50 != 0;
  fake.override_ok = rnd() % 20 != 0;
  if (name != NULL) {
    fake.cluster_len = strlen(name);
    memcpy(fake.cluster, name, fake.cluster_len);
  } else {
    /* Random, at least 8 bytes (no entry can name it by chance), or empty, or too long. */
    static const size_t lengths[] = {0, 8, 20, 100, 176, 177, sizeof fake.cluster};
    fake.cluster_len = rnd() % 2 ? lengths[rnd() % 7] : 8 + rnd() % (sizeof fake.cluster - 8);
    for (size_t i = 0; i < fake.cluster_len; i++) fake.cluster[i] = (char)rnd();
  }
  void *filter = &fake;
  void *stream = (void *)envoy_dynamic_module_on_http_filter_new(NULL, filter);
  envoy_dynamic_module_on_http_filter_request_headers(filter, stream, true);
  static char set[64];
  size_t set_len = fake.override_ok ? fake.override_len : 0;
  memcpy(set, fake.override, set_len);
  set[set_len] = '\0';
  /* The router's upstream log: one log per attempt (a retried request has several). */
  size_t attempts = rnd() % 10 == 0 ? 0 : 1 + rnd() % 3;
  for (size_t k = 0; k < attempts; k++) {
    static const uint64_t codes[] = {0, 200, 200, 200, 503, 502, 404, 639, 640, 70000};
    fake.code = codes[rnd() % (sizeof codes / sizeof codes[0])];
    fake.has_code = fake.code != 0 || rnd() % 2;
    fake.flags = rnd() % 4 == 0 ? rnd() : 0;
    fake.has_upstream_cluster = rnd() % 50 != 0;
    fake.log_worker = rnd() % 20 == 0 ? (uint32_t)(rnd() % 70) : worker;
    switch (rnd() % 4) {
      case 0: fake.served_len = set_len; memcpy(fake.served, set, set_len); break;
      case 1: fake.served_len = strlen(addrs[0]); memcpy(fake.served, addrs[0], fake.served_len); break;
      case 2:
        fake.served_len = rnd() % sizeof fake.served;
        for (size_t i = 0; i < fake.served_len; i++) fake.served[i] = (char)rnd();
        break;
      default: fake.served_len = 0; break;
    }
    int log_type = rnd() % 20 == 0 ? (int)(rnd() % 14) : 9; /* 9: UpstreamEnd */
    envoy_dynamic_module_on_access_logger_log(&fake, logger, log_type);
  }
  if (rnd() % 10 != 0) envoy_dynamic_module_on_http_filter_stream_complete(filter, stream);
  envoy_dynamic_module_on_http_filter_destroy(stream);
  check_records(name); /* the logger sees the cluster even when the filter did not */
  check_override(fake.has_cluster ? name : NULL, set_len ? set : NULL);
  return set_len ? set : NULL;
}

int main(int argc, char **argv) {
  if (argc != 3) fail("usage: fuzz_driver SEED ITERATIONS");
  rng_state = strtoull(argv[1], NULL, 10) * 2654435761u + 1;
  unsigned long iterations = strtoul(argv[2], NULL, 10), checked = 0;
  if (strcmp(envoy_dynamic_module_on_program_init(), "v0.2.0") != 0) fail("abi version");
  const char *path = "/nonexistent/extproc-fuzz.sock";
  if (envoy_dynamic_module_on_http_filter_config_new(NULL, (envoy_buffer){"extproc", 7},
                                                     (envoy_buffer){path, strlen(path)}) == NULL)
    fail("config_new");
  if (envoy_dynamic_module_on_access_logger_config_new(NULL, (envoy_buffer){"other", 5},
                                                       (envoy_buffer){NULL, 0}) != NULL)
    fail("an access logger of another name was taken");
  const void *log_config = envoy_dynamic_module_on_access_logger_config_new(
      NULL, (envoy_buffer){"attempts", 8}, (envoy_buffer){NULL, 0});
  if (log_config == NULL) fail("access logger config_new");
  logger = envoy_dynamic_module_on_access_logger_new(log_config, &fake);
  if (logger == NULL) fail("access logger new");
  region = extproc_fuzz_region();
  if (region == NULL) fail("no region");
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) != 0) fail("socketpair");
  extproc_fuzz_set_link(pair[0]);
  link_peer = pair[1];
  for (unsigned long it = 0; it < iterations; it++) {
    uint64_t action = rnd() % 100;
    uint32_t slot = (uint32_t)(rnd() % N_SLOTS);
    if (action < 25) {
      const char *name = names[rnd() % N_NAMES];
      if (write_valid(slot, name) > 0 && request(name, (uint32_t)(rnd() % 64)) != NULL)
        checked++;
    } else if (action < 35) {
      write_random_bytes();
    } else if (action < 45) {
      write_wild(slot);
    } else if (action < 50) {
      seq_begin(slot); /* a writer that died mid-write */
      if (rnd() % 2) write_random_bytes();
    } else {
      const char *name = rnd() % 8 == 0 ? NULL : names[rnd() % N_NAMES];
      request(name, (uint32_t)(rnd() % 70));
    }
    observe_seqs();
  }
  uint64_t dropped, bad, refused;
  memcpy(&dropped, region + 40, 8);
  memcpy(&bad, region + 48, 8);
  memcpy(&refused, region + 56, 8);
  if (refused != refused_by_fake) fail("overrides_refused differs from the refusals");
  printf("ok overrides=%lu checked=%lu records=%lu dropped=%lu bad_snapshots=%lu "
         "overrides_refused=%lu\n",
         overrides, checked, records, (unsigned long)dropped, (unsigned long)bad,
         (unsigned long)refused);
  return 0;
}
