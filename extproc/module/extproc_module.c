/*
 * extproc_module.c: the shim of `--data-path module`, an Envoy dynamic module (HTTP filter).
 *
 * It carries the extproc service's decisions into Envoy and the outcomes back, and decides
 * nothing: the service writes each service's host table into shared memory; the module picks
 * from it as the table says and reports what happened. The contract (region layout, hello,
 * records) is the "module path" section of extproc/wire.py; this file keeps its own copies
 * and tests/module/test_contract.py checks that they agree.
 *
 * Theory of operation:
 * 1. Region. At the first filter config outside `envoy --mode validate`, the module creates
 *    one memfd sealed against shrinking (a mapping that shrinks is a SIGBUS in Envoy), maps it,
 *    writes the header and starts the link thread. The service writes the entries, one per
 *    service under a seqlock; the module writes only the header's counters and its own
 *    success counters (one row per worker).
 * 2. Link. The link thread connects to the service's SOCK_SEQPACKET socket, sends the hello
 *    with the memfd, waits for a hangup and reconnects every 100 ms. Workers send failure
 *    records on that socket without ever blocking; a record that cannot go counts as dropped.
 * 3. Request. Route cluster -> slot (a per-worker cache) -> the worker's snapshot of the
 *    entry (copied again only when seq moves; a torn copy gives up after two tries, a copy
 *    that fails validation is refused and counted; either way the last good one stays) ->
 *    a host chosen as the entry's lb says -> set_upstream_override_host(strict = false).
 *    Any doubt means no override: Envoy's own load balancer decides, and so it does for an
 *    entry whose lb is LB_ENVOY (the service leaves the pick to Envoy's ring or slow start;
 *    its attempts are still reported as below).
 * 4. Outcome, per upstream attempt. The module is also an access logger ("attempts"), the
 *    router's upstream log: Envoy logs every attempt of a request when it ends, with that
 *    attempt's host, status and response flags, as its router reports each attempt to the
 *    outlier detector. A clean success on a host of the worker's snapshot is one counter
 *    increment; anything else is one 128-byte record to the service. A cluster the worker
 *    would not override on (no entry, withheld, no hosts): nothing.
 *
 * Threads: the hooks of a stream run on its worker. Per-worker state belongs to the thread
 * that claimed the worker index (checked on every use); process globals are set once, under
 * g_lock, on the main thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the region is little-endian");

/* ---- The contract (extproc/wire.py, "module path") -------------------------------------- */

#define ABI_VERSION "v0.2.0" /* Envoy 1.40 logs "ABI version v0.2.0 matched"; others warn */
#define LAYOUT_VERSION 1u
#define REGION_MAGIC "EXTPROCM"
#define HELLO_MAGIC "EXTPROCH"
#define RECORD_MAGIC "EXRR"
#define PAGE_SIZE 4096u
#define MAX_SERVICES 256u
#define MAX_HOSTS 64u
#define MAX_WORKERS 64u
#define HOST_SLOTS 4096u
#define ENTRIES_OFFSET PAGE_SIZE
#define ENTRY_SIZE 4384u
#define COUNTERS_OFFSET \
  ((ENTRIES_OFFSET + MAX_SERVICES * ENTRY_SIZE + PAGE_SIZE - 1) / PAGE_SIZE * PAGE_SIZE)
#define REGION_SIZE (COUNTERS_OFFSET + MAX_WORKERS * HOST_SLOTS * 8u)
#define HELLO_SIZE 64u
#define RECORD_SIZE 128u
#define RECONNECT_MS 100
/* Header offsets. */
#define HEADER_DROPPED_OFFSET 40u
#define HEADER_BAD_SNAPSHOTS_OFFSET 48u
#define HEADER_OVERRIDES_REFUSED_OFFSET 56u
/* Entry offsets. */
#define ENTRY_VERSION_OFFSET 8u
#define ENTRY_NAME_LEN_OFFSET 16u
#define ENTRY_LB_OFFSET 18u
#define ENTRY_FLAGS_OFFSET 19u
#define ENTRY_N_HOSTS_OFFSET 20u
#define ENTRY_ERROR_CODES_OFFSET 24u
#define ENTRY_CHOICE_COUNT_OFFSET 104u
#define ENTRY_NAME_OFFSET 112u
#define ENTRY_HOSTS_OFFSET 288u
#define ENTRY_NAME_MAX 176u
#define ERROR_CODES_BITS 640u
#define ENTRY_FLAG_WITHHELD 0x1u
#define LB_ROUND_ROBIN 0u
#define LB_LEAST_REQUEST 1u
#define LB_RANDOM 2u
#define LB_ENVOY 3u /* Envoy's own balancer picks (consistent hash, slow start): no override */
/* Host offsets, within an entry's host. */
#define HOST_SIZE 64u
#define HOST_SLOT_OFFSET 4u
#define HOST_ADDR_LEN_OFFSET 6u
#define HOST_ADDR_OFFSET 8u
#define HOST_ADDR_MAX 55u
/* Record offsets; reserved bytes stay zero. */
#define RECORD_WORKER_OFFSET 4u
#define RECORD_ENTRY_OFFSET 6u
#define RECORD_VERSION_OFFSET 8u
#define RECORD_HOST_INDEX_OFFSET 16u
#define RECORD_HOST_SLOT_OFFSET 18u
#define RECORD_KIND_OFFSET 22u
#define RECORD_STATUS_OFFSET 24u
#define RECORD_FLAGS_OFFSET 32u
#define RECORD_SUCCESSES_OFFSET 40u
#define RECORD_ADDR_LEN_OFFSET 48u
#define RECORD_ADDR_OFFSET 49u
#define RECORD_KIND_ATTEMPT 1u
#define NO_HOST_INDEX 0xFFFFu
#define NO_HOST_SLOT 0xFFFFu
/* The access logger's logger_name in the router's upstream_log. */
#define ATTEMPT_LOGGER_NAME "attempts"

_Static_assert(ENTRY_HOSTS_OFFSET + MAX_HOSTS * HOST_SIZE == ENTRY_SIZE, "entry layout");
_Static_assert(REGION_SIZE <= UINT32_MAX, "region_size is a u32");

/* ---- Envoy's ABI: the subset used, declared here (never a copy of abi.h) ------------------
 * Names and argument types from source/extensions/dynamic_modules/abi/abi.h (envoyproxy/envoy),
 * checked against Envoy 1.40's binary (each callback's register use, objdump) and at run time
 * (tests/module/). Buffers are {ptr, length} passed by value, enums are ints. A callback the
 * binary lacks fails the dlopen, never a call. */

typedef struct {
  const char *ptr;
  size_t length;
} envoy_buffer;

enum { LOG_INFO = 2, LOG_WARN = 3, LOG_ERROR = 4 }; /* envoy_dynamic_module_type_log_level */
/* envoy_dynamic_module_type_attribute_id: the enum's index (1.40 answers these as shown). */
enum {
  ATTR_RESPONSE_CODE = 15,
  ATTR_UPSTREAM_ADDRESS = 41,
};
/* envoy_dynamic_module_type_access_log_type: the log Envoy's router writes when an upstream
 * attempt ends (AccessLogType::UpstreamEnd). */
enum { ACCESS_LOG_UPSTREAM_END = 9 };

extern bool envoy_dynamic_module_callback_http_get_cluster_name(void *filter, envoy_buffer *out);
extern bool envoy_dynamic_module_callback_http_set_upstream_override_host(void *filter,
                                                                          envoy_buffer host,
                                                                          bool strict);
extern uint32_t envoy_dynamic_module_callback_http_filter_get_worker_index(void *filter);
extern uint32_t envoy_dynamic_module_callback_get_concurrency(void); /* main thread only */
/* The access logger's view of the stream being logged: for the router's upstream log, one
 * upstream attempt's own stream info (its host, status and flags). */
extern bool envoy_dynamic_module_callback_access_logger_get_attribute_int(void *logger, int id,
                                                                          uint64_t *out);
extern bool envoy_dynamic_module_callback_access_logger_get_attribute_string(void *logger, int id,
                                                                             envoy_buffer *out);
extern uint64_t envoy_dynamic_module_callback_access_logger_get_response_flags(void *logger);
extern uint32_t envoy_dynamic_module_callback_access_logger_get_worker_index(void *logger);
extern bool envoy_dynamic_module_callback_access_logger_get_upstream_cluster(void *logger,
                                                                             envoy_buffer *out);
extern bool envoy_dynamic_module_callback_is_validation_mode(void);
extern bool envoy_dynamic_module_callback_log_enabled(int level);
extern void envoy_dynamic_module_callback_log(int level, envoy_buffer message);

#define EXPORT __attribute__((visibility("default")))

/* ---- Small helpers ------------------------------------------------------------------------ */

static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, sizeof v); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, sizeof v); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, sizeof v); return v; }
static void wr16(uint8_t *p, uint32_t v) { uint16_t x = (uint16_t)v; memcpy(p, &x, sizeof x); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, sizeof v); }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, sizeof v); }

static void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_msg(int level, const char *fmt, ...) {
  char text[512];
  if (!envoy_dynamic_module_callback_log_enabled(level)) return; /* no formatting for nothing */
  va_list args;
  va_start(args, fmt);
  int n = vsnprintf(text, sizeof text, fmt, args);
  va_end(args);
  if (n < 0) return;
  size_t len = (size_t)n < sizeof text ? (size_t)n : sizeof text - 1;
  envoy_dynamic_module_callback_log(level, (envoy_buffer){text, len});
}

static uint64_t fnv1a(const char *s, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

static uint64_t xorshift(uint64_t *state) { /* xorshift64*, state never 0 */
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 2685821657736338717ull;
}

/* ---- Process globals ------------------------------------------------------------------------ */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *g_region;          /* published with release once the header is written */
static int g_link_fd = -1;         /* the link's stable fd number; -1 until the first link */
static uint32_t g_concurrency;
static char g_socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static uint8_t *region(void) { return __atomic_load_n(&g_region, __ATOMIC_ACQUIRE); }

static void count(uint32_t header_offset) {
  uint8_t *r = region();
  if (r) __atomic_fetch_add((uint64_t *)(r + header_offset), 1, __ATOMIC_RELAXED);
}

static uint64_t *success_counter(uint8_t *r, uint32_t worker, uint32_t host_slot) {
  return (uint64_t *)(r + COUNTERS_OFFSET + ((size_t)worker * HOST_SLOTS + host_slot) * 8u);
}

/* ---- The link and the memfd (the fuzz build has neither) ------------------------------------ */

#ifndef EXTPROC_MODULE_FUZZ
static int g_memfd = -1;

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

/* A connected socket with the hello and the memfd sent, or -1. Non-blocking: a wedged service
 * never stalls the link thread, and workers send with MSG_DONTWAIT anyway. */
static int link_connect(void) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  memcpy(addr.sun_path, g_socket_path, sizeof addr.sun_path);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  uint8_t hello[HELLO_SIZE] = {0};
  memcpy(hello, HELLO_MAGIC, 8);
  wr32(hello + 8, LAYOUT_VERSION);
  wr32(hello + 12, REGION_SIZE);
  wr32(hello + 16, (uint32_t)getpid());
  wr32(hello + 20, g_concurrency);
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {hello, sizeof hello};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                       .msg_controllen = sizeof control.buf};
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &g_memfd, sizeof(int));
  if (sendmsg(fd, &msg, MSG_NOSIGNAL) != (ssize_t)sizeof hello) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Wait until the service hangs up; whatever it sends is read and ignored. */
static void link_wait_hangup(int fd) {
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return;
    char sink[256];
    ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return;
  }
}

/* The link thread. The fd number workers send on never changes once published: a new link is
 * installed over it with dup3, so a worker's send never reaches a reused fd (a closed and
 * reused number could be another socket of Envoy's). A dead link stays installed until the
 * next one: sends fail (EPIPE) and count as dropped, as with no link at all. */
static void *link_main(void *unused) {
  (void)unused;
  int stable = -1;
  bool lost_logged = false;
  for (;;) {
    int fd = link_connect();
    if (fd < 0) {
      if (!lost_logged) log_msg(LOG_INFO, "extproc module: no link to %s yet; retrying every %d ms",
                                g_socket_path, RECONNECT_MS);
      lost_logged = true;
      sleep_ms(RECONNECT_MS);
      continue;
    }
    if (stable < 0) {
      stable = fd;
      __atomic_store_n(&g_link_fd, stable, __ATOMIC_RELEASE);
    } else {
      int ok = dup3(fd, stable, O_CLOEXEC);
      close(fd);
      if (ok < 0) {
        sleep_ms(RECONNECT_MS);
        continue;
      }
    }
    log_msg(LOG_INFO, "extproc module: linked to %s", g_socket_path);
    lost_logged = false;
    link_wait_hangup(stable);
    log_msg(LOG_INFO, "extproc module: link to %s lost; reconnecting", g_socket_path);
    lost_logged = true;
    sleep_ms(RECONNECT_MS);
  }
  return NULL;
}

/* One memfd, sealed so neither side can shrink or grow it (a truncated mapping is a SIGBUS
 * in Envoy; the seals make the service's ftruncate fail with EPERM), mapped read-write. */
static uint8_t *region_create(void) {
  int fd = memfd_create("extproc-module", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return NULL;
  void *p = MAP_FAILED;
  if (ftruncate(fd, REGION_SIZE) == 0 &&
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0)
    p = mmap(NULL, REGION_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return NULL;
  }
  g_memfd = fd;
  return p;
}
#else
/* The fuzz driver's region (tests/module/fuzz_driver.c): heap memory of exactly REGION_SIZE,
 * so AddressSanitizer sees any access past it; no link thread, the driver sets the link. */
static uint8_t *region_create(void) { return calloc(1, REGION_SIZE); }
EXPORT uint8_t *extproc_fuzz_region(void) { return region(); }
EXPORT void extproc_fuzz_set_link(int fd) { __atomic_store_n(&g_link_fd, fd, __ATOMIC_RELEASE); }
#endif

/* ---- The region ------------------------------------------------------------------------------ */

static void region_start(void) {
  uint8_t *r = region_create();
  if (r == NULL) {
    log_msg(LOG_ERROR, "extproc module: cannot create the shared region (%s); no overrides",
            strerror(errno));
    return;
  }
  memcpy(r, REGION_MAGIC, 8);
  wr32(r + 8, LAYOUT_VERSION);
  wr32(r + 12, REGION_SIZE);
  wr32(r + 16, MAX_SERVICES);
  wr32(r + 20, MAX_HOSTS);
  wr32(r + 24, MAX_WORKERS);
  wr32(r + 28, HOST_SLOTS);
  wr32(r + 32, g_concurrency);
  wr32(r + 36, (uint32_t)getpid());
  __atomic_store_n(&g_region, r, __ATOMIC_RELEASE);
#ifndef EXTPROC_MODULE_FUZZ
  /* The link thread takes no signals: Envoy's own threads handle them. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t thread;
  int err = pthread_create(&thread, NULL, link_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err != 0) {
    log_msg(LOG_ERROR, "extproc module: cannot start the link thread (%s)", strerror(err));
    return;
  }
  pthread_detach(thread);
#endif
  log_msg(LOG_INFO, "extproc module: region of %u bytes for %u workers, link %s", REGION_SIZE,
          g_concurrency, g_socket_path);
  if (g_concurrency > MAX_WORKERS)
    log_msg(LOG_WARN, "extproc module: workers from %u on are left to Envoy's load balancer",
            MAX_WORKERS);
}

/* ---- Snapshots: a worker's validated copy of one entry ------------------------------------ */

struct host {
  uint32_t weight;
  uint16_t slot;
  uint8_t addr_len;
  char addr[HOST_ADDR_MAX + 1]; /* NUL-terminated copy */
};

struct snapshot {
  uint64_t seq; /* the entry's seq this copy was taken at */
  uint64_t version;
  uint16_t name_len;
  char name[ENTRY_NAME_MAX];
  uint32_t n_hosts;
  uint32_t choice_count;
  uint8_t lb;
  bool withheld;
  bool equal_weights;
  uint64_t total_weight;
  uint8_t error_codes[ERROR_CODES_BITS / 8];
  struct host hosts[MAX_HOSTS];
};

enum parse_result { ENTRY_OK, ENTRY_BAD, ENTRY_OTHER_NAME };

static bool addr_ok(const uint8_t *addr, size_t len) {
  if (len == 0 || len > HOST_ADDR_MAX) return false;
  for (size_t i = 0; i < len; i++) {
    uint8_t c = addr[i];
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
              c == '.' || c == ':' || c == '[' || c == ']';
    if (!ok) return false;
  }
  return true;
}

/* Validate every field of a consistent copy of an entry and parse it. An entry for another
 * name (or an unused slot) is not this cluster's: the caller looks again. */
static enum parse_result parse_entry(const uint8_t *e, const char *name, size_t name_len,
                                     struct snapshot *out) {
  uint32_t len = rd16(e + ENTRY_NAME_LEN_OFFSET);
  if (len > ENTRY_NAME_MAX) return ENTRY_BAD;
  if (len == 0 || len != name_len || memcmp(e + ENTRY_NAME_OFFSET, name, len) != 0)
    return ENTRY_OTHER_NAME;
  uint8_t lb = e[ENTRY_LB_OFFSET], flags = e[ENTRY_FLAGS_OFFSET];
  uint32_t n = rd32(e + ENTRY_N_HOSTS_OFFSET), choices = rd32(e + ENTRY_CHOICE_COUNT_OFFSET);
  if (lb > LB_ENVOY || (flags & ~ENTRY_FLAG_WITHHELD) != 0 || n > MAX_HOSTS) return ENTRY_BAD;
  /* Envoy's LeastRequest takes choice_count >= 2; more choices than hosts make no sense. */
  if (lb == LB_LEAST_REQUEST && (choices < 2 || choices > MAX_HOSTS)) return ENTRY_BAD;
  uint64_t total = 0;
  bool equal = true;
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *h = e + ENTRY_HOSTS_OFFSET + i * HOST_SIZE;
    struct host *dst = &out->hosts[i];
    dst->weight = rd32(h);
    dst->slot = rd16(h + HOST_SLOT_OFFSET);
    dst->addr_len = h[HOST_ADDR_LEN_OFFSET];
    if (dst->weight == 0 || dst->slot >= HOST_SLOTS) return ENTRY_BAD;
    if (!addr_ok(h + HOST_ADDR_OFFSET, dst->addr_len)) return ENTRY_BAD;
    memcpy(dst->addr, h + HOST_ADDR_OFFSET, dst->addr_len);
    dst->addr[dst->addr_len] = '\0';
    total += dst->weight;
    equal = equal && dst->weight == out->hosts[0].weight;
  }
  if (total >= (1ull << 32)) return ENTRY_BAD;
  out->version = rd64(e + ENTRY_VERSION_OFFSET);
  out->name_len = (uint16_t)len;
  memcpy(out->name, name, len);
  out->n_hosts = n;
  out->choice_count = choices;
  out->lb = lb;
  out->withheld = (flags & ENTRY_FLAG_WITHHELD) != 0;
  out->equal_weights = equal;
  out->total_weight = total;
  memcpy(out->error_codes, e + ENTRY_ERROR_CODES_OFFSET, sizeof out->error_codes);
  return ENTRY_OK;
}

/* Per worker, per slot: the last good snapshot and the LB state built on it. */
struct slot_state {
  struct snapshot snap;
  bool have;          /* snap is a good snapshot */
  bool refused;       /* refused_seq failed validation: not copied or counted again */
  uint64_t refused_seq;
  uint64_t generation; /* bumped with every new snapshot; streams remember theirs */
  uint64_t rr_next;
  double edf_now;
  double deadline[MAX_HOSTS];
  uint64_t order[MAX_HOSTS];
  uint64_t order_next;
  uint32_t active[MAX_HOSTS]; /* this worker's streams on each host (LEAST_REQUEST) */
};

#define CACHE_SIZE 512u /* power of two, > MAX_SERVICES */
#define CACHE_PROBES 8u
/* How long a "no entry has this name" answer holds before the slots are scanned again (a
 * tenth of it when a slot was being written during the scan): a scan reads every slot, and a
 * cluster the service has no entry for must not pay one per request. */
#define MISS_HOLD_NS 10000000ull

struct cache_entry {
  uint64_t hash;
  uint64_t retry_ns; /* slot -1: scan again from this time on */
  uint16_t len;
  bool used;
  int16_t slot; /* -1: no entry has this name */
};

struct worker {
  pthread_t owner;
  uint32_t index;
  uint64_t rng;
  struct cache_entry cache[CACHE_SIZE];
  struct slot_state *slots[MAX_SERVICES];
  uint8_t *scratch;         /* ENTRY_SIZE bytes: the copy being validated */
  struct snapshot *parsed;  /* what it parses into (own allocations: ASan sees their ends) */
};

static struct worker *g_workers[MAX_WORKERS];

/* The state of worker `index` if the calling thread is that worker, or NULL (index out of
 * range, claimed by another thread, no memory): no override, no outcome. The filter and the
 * access logger name a worker by the same index (Envoy's "worker_<index>" threads). */
static struct worker *worker_at(uint32_t index) {
  if (index >= MAX_WORKERS) return NULL;
  struct worker *w = __atomic_load_n(&g_workers[index], __ATOMIC_ACQUIRE);
  if (w == NULL) {
    struct worker *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL) return NULL;
    fresh->scratch = malloc(ENTRY_SIZE);
    fresh->parsed = malloc(sizeof *fresh->parsed);
    if (fresh->scratch == NULL || fresh->parsed == NULL) {
      free(fresh->scratch);
      free(fresh->parsed);
      free(fresh);
      return NULL;
    }
    fresh->owner = pthread_self();
    fresh->index = index;
    if (getrandom(&fresh->rng, sizeof fresh->rng, GRND_NONBLOCK) != sizeof fresh->rng)
      fresh->rng = (uint64_t)(uintptr_t)fresh ^ ((uint64_t)time(NULL) << 20);
    fresh->rng |= 1;
    struct worker *expected = NULL;
    if (__atomic_compare_exchange_n(&g_workers[index], &expected, fresh, false, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
      w = fresh;
    } else {
      free(fresh->scratch);
      free(fresh->parsed);
      free(fresh);
      w = expected;
    }
  }
  return pthread_equal(w->owner, pthread_self()) ? w : NULL;
}

/* ---- Choosing a host ---------------------------------------------------------------------- */

static double edf_weight(const struct slot_state *ss, uint32_t i) {
  double weight = ss->snap.hosts[i].weight;
  /* LEAST_REQUEST with unequal weights: Envoy's weight / (active + 1)^bias, bias 1.0. */
  return ss->snap.lb == LB_LEAST_REQUEST ? weight / (ss->active[i] + 1.0) : weight;
}

/* Envoy's EDF scheduler (weighted round robin): the earliest deadline wins, ties go to the
 * host added first; the winner is added back at now + 1/weight. */
static uint32_t edf_pick(struct slot_state *ss) {
  uint32_t best = 0;
  for (uint32_t i = 1; i < ss->snap.n_hosts; i++) {
    if (ss->deadline[i] < ss->deadline[best] ||
        (ss->deadline[i] == ss->deadline[best] && ss->order[i] < ss->order[best]))
      best = i;
  }
  ss->edf_now = ss->deadline[best];
  ss->deadline[best] = ss->edf_now + 1.0 / edf_weight(ss, best);
  ss->order[best] = ss->order_next++;
  return best;
}

/* A new snapshot: fresh LB state, started at a random point as Envoy's workers do. */
static void lb_reset(struct worker *w, struct slot_state *ss) {
  uint32_t n = ss->snap.n_hosts;
  ss->generation++;
  memset(ss->active, 0, sizeof ss->active);
  ss->edf_now = 0;
  for (uint32_t i = 0; i < n; i++) {
    ss->deadline[i] = 1.0 / ss->snap.hosts[i].weight;
    ss->order[i] = i;
  }
  ss->order_next = n;
  ss->rr_next = n ? xorshift(&w->rng) % n : 0;
  if (n && ss->snap.lb == LB_ROUND_ROBIN && !ss->snap.equal_weights) {
    for (uint64_t k = xorshift(&w->rng) % n; k > 0; k--) edf_pick(ss);
  }
}

static uint32_t choose(struct worker *w, struct slot_state *ss) {
  const struct snapshot *s = &ss->snap;
  uint32_t n = s->n_hosts;
  switch (s->lb) {
    case LB_ROUND_ROBIN:
      return s->equal_weights ? (uint32_t)(ss->rr_next++ % n) : edf_pick(ss);
    case LB_LEAST_REQUEST:
      if (!s->equal_weights) return edf_pick(ss);
      {
        /* choice_count random hosts, the one with fewest active streams; ties: the first. */
        uint32_t best = (uint32_t)(xorshift(&w->rng) % n);
        for (uint32_t k = 1; k < s->choice_count; k++) {
          uint32_t c = (uint32_t)(xorshift(&w->rng) % n);
          if (ss->active[c] < ss->active[best]) best = c;
        }
        return best;
      }
    default: { /* LB_RANDOM: weighted */
      uint64_t r = xorshift(&w->rng) % s->total_weight;
      for (uint32_t i = 0; i < n; i++) {
        if (r < s->hosts[i].weight) return i;
        r -= s->hosts[i].weight;
      }
      return n - 1;
    }
  }
}

/* ---- Finding a cluster's entry -------------------------------------------------------------- */

static const uint8_t *entry_at(const uint8_t *r, uint32_t slot) {
  return r + ENTRIES_OFFSET + (size_t)slot * ENTRY_SIZE;
}

static uint64_t seq_of(const uint8_t *entry) {
  return __atomic_load_n((const uint64_t *)entry, __ATOMIC_ACQUIRE);
}

/* The slot whose entry names this cluster, or -1. The names are read without the seqlock (a
 * hint: the snapshot checks the name again); a slot being written makes a "none" answer
 * uncertain, and an uncertain answer is not remembered for long. */
static int scan_slots(const uint8_t *r, const char *name, size_t len, bool *uncertain) {
  *uncertain = false;
  for (uint32_t s = 0; s < MAX_SERVICES; s++) {
    const uint8_t *e = entry_at(r, s);
    uint64_t seq = seq_of(e);
    if (seq & 1) {
      *uncertain = true;
      continue;
    }
    if (rd16(e + ENTRY_NAME_LEN_OFFSET) == len && memcmp(e + ENTRY_NAME_OFFSET, name, len) == 0)
      return (int)s;
    if (seq_of(e) != seq) *uncertain = true;
  }
  return -1;
}

static struct cache_entry *cache_find(struct worker *w, const char *name, size_t len) {
  uint64_t h = fnv1a(name, len);
  uint32_t first = (uint32_t)h & (CACHE_SIZE - 1);
  for (uint32_t p = 0; p < CACHE_PROBES; p++) {
    struct cache_entry *c = &w->cache[(first + p) & (CACHE_SIZE - 1)];
    if (c->used && c->hash == h && c->len == len) return c;
    if (!c->used) {
      *c = (struct cache_entry){.hash = h, .len = (uint16_t)len, .used = true, .slot = -1};
      return c;
    }
  }
  struct cache_entry *c = &w->cache[first]; /* full: the first of the window makes room */
  *c = (struct cache_entry){.hash = h, .len = (uint16_t)len, .used = true, .slot = -1};
  return c;
}

/* The worker's snapshot of `slot` for this cluster, refreshed when the entry's seq moved, or
 * NULL (nothing good yet, or the slot now holds another name: *moved). */
static struct slot_state *snapshot_of(struct worker *w, const uint8_t *r, uint32_t slot,
                                      const char *name, size_t len, bool *moved) {
  struct slot_state *ss = w->slots[slot];
  if (ss == NULL) {
    ss = w->slots[slot] = calloc(1, sizeof *ss);
    if (ss == NULL) return NULL;
  }
  /* The last good snapshot is this cluster's only if it names it (another name: the slot
   * held another service when this worker last looked). */
  bool mine = ss->have && ss->snap.name_len == len && memcmp(ss->snap.name, name, len) == 0;
  struct slot_state *last_good = mine ? ss : NULL;
  const uint8_t *e = entry_at(r, slot);
  uint64_t seq = seq_of(e);
  if (ss->have && ss->snap.seq == seq) {
    *moved = !mine;
    return last_good;
  }
  if (ss->refused && ss->refused_seq == seq) return last_good;
  /* The seqlock read: at most two tries, never a spin (a writer stuck mid-write must not
   * stall a worker: the last good snapshot serves meanwhile). */
  bool consistent = false;
  for (int attempt = 0; attempt < 2 && !consistent; attempt++) {
    seq = seq_of(e);
    if (seq & 1) continue;
    memcpy(w->scratch, e, ENTRY_SIZE);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    consistent = __atomic_load_n((const uint64_t *)e, __ATOMIC_RELAXED) == seq;
  }
  if (!consistent) return last_good; /* being written */
  switch (parse_entry(w->scratch, name, len, w->parsed)) {
    case ENTRY_OK:
      ss->snap = *w->parsed;
      ss->snap.seq = seq;
      ss->have = true;
      ss->refused = false;
      lb_reset(w, ss);
      return ss;
    case ENTRY_BAD:
      count(HEADER_BAD_SNAPSHOTS_OFFSET);
      ss->refused = true;
      ss->refused_seq = seq;
      return last_good;
    default: /* ENTRY_OTHER_NAME: the slot is no longer this cluster's */
      if (mine) ss->have = false;
      *moved = true;
      return NULL;
  }
}

/* A coarse monotonic clock: the vDSO answers it, no system call. */
static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* The cluster's slot state, found through the worker's cache (scanning on a miss). */
static struct slot_state *lookup(struct worker *w, const uint8_t *r, const char *name, size_t len,
                                 uint32_t *slot_out) {
  if (len == 0 || len > ENTRY_NAME_MAX) return NULL;
  struct cache_entry *c = cache_find(w, name, len);
  for (int pass = 0; pass < 2; pass++) {
    if (c->slot < 0) {
      uint64_t now = now_ns();
      if (now < c->retry_ns) return NULL;
      bool uncertain;
      int found = scan_slots(r, name, len, &uncertain);
      c->slot = (int16_t)found;
      c->retry_ns = now + (uncertain ? MISS_HOLD_NS / 10 : MISS_HOLD_NS);
      if (found < 0) return NULL;
    }
    bool moved = false;
    struct slot_state *ss = snapshot_of(w, r, (uint32_t)c->slot, name, len, &moved);
    if (!moved) {
      *slot_out = (uint32_t)c->slot;
      return ss;
    }
    c->slot = -1; /* the entry moved: scan once more */
    c->retry_ns = 0;
  }
  return NULL;
}

/* ---- Streams: the pick ------------------------------------------------------------------ */

enum { STREAM_NONE, STREAM_OVERRIDDEN, STREAM_DONE };

/* What a stream keeps of its pick: enough to release LEAST_REQUEST's active count. */
struct stream {
  uint8_t state;
  uint16_t worker, slot, host;
  uint64_t generation;
};

static struct stream g_no_stream; /* what a stream gets when there is no memory: nothing */

/* Set once an access logger named ATTEMPT_LOGGER_NAME was configured: without one, nothing
 * reports outcomes, which the filter says once. */
static bool g_attempt_logger;
static bool g_no_logger_said;

static void request_path(void *filter, struct stream *st) {
  uint8_t *r = region();
  envoy_buffer cluster = {NULL, 0};
  if (r == NULL || !envoy_dynamic_module_callback_http_get_cluster_name(filter, &cluster) ||
      cluster.ptr == NULL)
    return;
  struct worker *w = worker_at(envoy_dynamic_module_callback_http_filter_get_worker_index(filter));
  if (w == NULL) return;
  uint32_t slot = 0;
  struct slot_state *ss = lookup(w, r, cluster.ptr, cluster.length, &slot);
  if (ss == NULL || !ss->have || ss->snap.withheld || ss->snap.n_hosts == 0 ||
      ss->snap.lb == LB_ENVOY)
    return;
  uint32_t i = choose(w, ss);
  const struct host *h = &ss->snap.hosts[i];
  if (!envoy_dynamic_module_callback_http_set_upstream_override_host(
          filter, (envoy_buffer){h->addr, h->addr_len}, false)) {
    count(HEADER_OVERRIDES_REFUSED_OFFSET);
    return;
  }
  if (ss->snap.lb == LB_LEAST_REQUEST) ss->active[i]++;
  *st = (struct stream){.state = STREAM_OVERRIDDEN, .worker = (uint16_t)w->index,
                        .slot = (uint16_t)slot, .host = (uint16_t)i,
                        .generation = ss->generation};
  if (!__atomic_load_n(&g_attempt_logger, __ATOMIC_RELAXED) &&
      !__atomic_exchange_n(&g_no_logger_said, true, __ATOMIC_RELAXED))
    log_msg(LOG_WARN, "extproc module: no access logger \"%s\" in the router's upstream_log: "
                      "outcomes are not reported", ATTEMPT_LOGGER_NAME);
}

/* The stream ended: its pick no longer counts as active on its host (LEAST_REQUEST). */
static void release_pick(void *filter, const struct stream *st) {
  struct worker *w = worker_at(envoy_dynamic_module_callback_http_filter_get_worker_index(filter));
  if (w == NULL || w->index != st->worker) return;
  struct slot_state *ss = w->slots[st->slot];
  if (ss != NULL && ss->have && ss->generation == st->generation &&
      ss->snap.lb == LB_LEAST_REQUEST && ss->active[st->host] > 0)
    ss->active[st->host]--;
}

/* ---- Attempts: the outcomes ------------------------------------------------------------- */

static uint32_t clamp32(uint64_t v) { return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v; }

static void send_record(const uint8_t *rec) {
  int fd = __atomic_load_n(&g_link_fd, __ATOMIC_ACQUIRE);
  if (fd < 0 || send(fd, rec, RECORD_SIZE, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)RECORD_SIZE)
    count(HEADER_DROPPED_OFFSET);
}

/* One upstream attempt ended (the router's upstream log): count it or report it. The logger
 * sees the attempt's own stream info, so every attempt of a retried request comes here with
 * its own host, the middle one of three included, as Envoy's router reports each attempt to
 * that host's outlier detector (router.cc onUpstreamHeaders / onUpstreamReset). No policy:
 * the status and flags go to the service as Envoy gave them. */
static void attempt_path(void *logger) {
  uint8_t *r = region();
  if (r == NULL) return;
  struct worker *w = worker_at(envoy_dynamic_module_callback_access_logger_get_worker_index(logger));
  envoy_buffer cluster = {NULL, 0};
  if (w == NULL || !envoy_dynamic_module_callback_access_logger_get_upstream_cluster(logger, &cluster) ||
      cluster.ptr == NULL)
    return;
  uint32_t slot = 0;
  struct slot_state *ss = lookup(w, r, cluster.ptr, cluster.length, &slot);
  /* As on the request path: a cluster the worker does not override on teaches nothing. */
  if (ss == NULL || !ss->have || ss->snap.withheld || ss->snap.n_hosts == 0) return;
  const struct snapshot *snap = &ss->snap;

  uint64_t code = 0;
  if (!envoy_dynamic_module_callback_access_logger_get_attribute_int(logger, ATTR_RESPONSE_CODE,
                                                                     &code))
    code = 0; /* no response: a connect failure, a reset, a client that went away */
  uint64_t flags = envoy_dynamic_module_callback_access_logger_get_response_flags(logger);
  envoy_buffer addr = {NULL, 0};
  if (!envoy_dynamic_module_callback_access_logger_get_attribute_string(
          logger, ATTR_UPSTREAM_ADDRESS, &addr) || addr.ptr == NULL || addr.length > HOST_ADDR_MAX)
    addr.length = 0; /* no address, or none an entry could hold: never a truncated one */
  uint32_t index = NO_HOST_INDEX, host_slot = NO_HOST_SLOT;
  for (uint32_t i = 0; i < snap->n_hosts; i++) {
    const struct host *h = &snap->hosts[i];
    if (h->addr_len == addr.length && memcmp(h->addr, addr.ptr, addr.length) == 0) {
      index = i;
      host_slot = h->slot;
      break;
    }
  }
  /* A clean answer from a host of the snapshot is a counter increment; anything else, status
   * 0 included, is the service's to judge. */
  bool counted = host_slot != NO_HOST_SLOT && code != 0 && code < ERROR_CODES_BITS &&
                 flags == 0 && (snap->error_codes[code / 8] >> (code % 8) & 1) == 0;
  if (counted) {
    uint64_t *c = success_counter(r, w->index, host_slot);
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    return;
  }
  uint8_t rec[RECORD_SIZE] = {0};
  memcpy(rec, RECORD_MAGIC, 4);
  wr16(rec + RECORD_WORKER_OFFSET, w->index);
  wr16(rec + RECORD_ENTRY_OFFSET, slot);
  wr64(rec + RECORD_VERSION_OFFSET, snap->version);
  wr16(rec + RECORD_HOST_INDEX_OFFSET, index);
  wr16(rec + RECORD_HOST_SLOT_OFFSET, host_slot);
  wr16(rec + RECORD_KIND_OFFSET, RECORD_KIND_ATTEMPT);
  wr32(rec + RECORD_STATUS_OFFSET, clamp32(code));
  wr64(rec + RECORD_FLAGS_OFFSET, flags);
  if (host_slot != NO_HOST_SLOT)
    wr64(rec + RECORD_SUCCESSES_OFFSET,
         __atomic_load_n(success_counter(r, w->index, host_slot), __ATOMIC_RELAXED));
  rec[RECORD_ADDR_LEN_OFFSET] = (uint8_t)addr.length;
  if (addr.length > 0) memcpy(rec + RECORD_ADDR_OFFSET, addr.ptr, addr.length);
  send_record(rec);
}

/* ---- The hooks Envoy 1.40 resolves: without any one, it refuses the filter config --------
 * (tests/module/test_load.py). The config-level hooks its binary also names (config_scheduled,
 * config_http_callout_done, config_http_stream_*) are optional there, as are local_reply and
 * per_route_config_*. */

EXPORT const char *envoy_dynamic_module_on_program_init(void) { return ABI_VERSION; }

/* The filter's config is the service's socket path (a StringValue). Envoy keeps running
 * without the module's help if the region cannot be made; a bad config is rejected. */
EXPORT const void *envoy_dynamic_module_on_http_filter_config_new(void *config_envoy,
                                                                  envoy_buffer name,
                                                                  envoy_buffer config) {
  static const char token = 0;
  (void)config_envoy;
  (void)name;
  if (config.ptr == NULL || config.length == 0 || config.length >= sizeof g_socket_path ||
      memchr(config.ptr, '\0', config.length) != NULL) {
    log_msg(LOG_ERROR, "extproc module: filter_config must be the service's socket path "
                       "(1 to %zu bytes)", sizeof g_socket_path - 1);
    return NULL;
  }
  if (envoy_dynamic_module_callback_is_validation_mode()) return &token; /* nothing made */
  pthread_mutex_lock(&g_lock);
  if (region() == NULL) {
    memset(g_socket_path, 0, sizeof g_socket_path);
    memcpy(g_socket_path, config.ptr, config.length);
    g_concurrency = envoy_dynamic_module_callback_get_concurrency();
    region_start();
  } else if (strlen(g_socket_path) != config.length ||
             memcmp(g_socket_path, config.ptr, config.length) != 0) {
    log_msg(LOG_WARN, "extproc module: another socket path in a later config: keeping %s",
            g_socket_path);
  }
  pthread_mutex_unlock(&g_lock);
  return &token;
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(const void *config) {
  (void)config; /* the region and the link live as long as the process */
}

EXPORT const void *envoy_dynamic_module_on_http_filter_new(const void *config, void *filter) {
  (void)config;
  (void)filter;
  struct stream *st = calloc(1, sizeof *st);
  return st != NULL ? st : &g_no_stream;
}

EXPORT int envoy_dynamic_module_on_http_filter_request_headers(void *filter, void *stream,
                                                               bool end_of_stream) {
  (void)end_of_stream;
  struct stream *st = stream;
  if (st != &g_no_stream && st->state == STREAM_NONE) request_path(filter, st);
  return 0; /* Continue */
}

EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(void *filter, void *stream) {
  struct stream *st = stream;
  if (st == &g_no_stream || st->state != STREAM_OVERRIDDEN) return;
  release_pick(filter, st);
  st->state = STREAM_DONE;
}

EXPORT void envoy_dynamic_module_on_http_filter_destroy(void *stream) {
  if (stream != &g_no_stream) free(stream);
}

/* Hooks the shim has no use for; 1.40 refuses a module without them. All return Continue. */
EXPORT int envoy_dynamic_module_on_http_filter_request_body(void *f, void *s, bool eos) {
  (void)f, (void)s, (void)eos;
  return 0;
}
EXPORT int envoy_dynamic_module_on_http_filter_request_trailers(void *f, void *s) {
  (void)f, (void)s;
  return 0;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_headers(void *f, void *s, bool eos) {
  (void)f, (void)s, (void)eos;
  return 0;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_body(void *f, void *s, bool eos) {
  (void)f, (void)s, (void)eos;
  return 0;
}
EXPORT int envoy_dynamic_module_on_http_filter_response_trailers(void *f, void *s) {
  (void)f, (void)s;
  return 0;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(void *f, void *s, uint64_t id,
                                                                  int result, void *headers,
                                                                  size_t n_headers, void *chunks,
                                                                  size_t n_chunks) {
  (void)f, (void)s, (void)id, (void)result, (void)headers, (void)n_headers, (void)chunks,
      (void)n_chunks;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(void *f, void *s, uint64_t id,
                                                                    void *headers, size_t n,
                                                                    bool end_stream) {
  (void)f, (void)s, (void)id, (void)headers, (void)n, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(void *f, void *s, uint64_t id,
                                                                 const void *data, size_t n,
                                                                 bool end_stream) {
  (void)f, (void)s, (void)id, (void)data, (void)n, (void)end_stream;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(void *f, void *s,
                                                                     uint64_t id, void *trailers,
                                                                     size_t n) {
  (void)f, (void)s, (void)id, (void)trailers, (void)n;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(void *f, void *s,
                                                                     uint64_t id) {
  (void)f, (void)s, (void)id;
}
EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(void *f, void *s, uint64_t id,
                                                                  int reason) {
  (void)f, (void)s, (void)id, (void)reason;
}
EXPORT void envoy_dynamic_module_on_http_filter_scheduled(void *f, void *s, uint64_t id) {
  (void)f, (void)s, (void)id;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    void *f, void *s) {
  (void)f, (void)s;
}
EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    void *f, void *s) {
  (void)f, (void)s;
}

/* ---- The access logger: the router's upstream log of every attempt ------------------------
 * Envoy 1.40 resolves these five when an access logger names the module (flush is optional)
 * (source/extensions/access_loggers/dynamic_modules/access_log_config.cc). The router calls
 * its upstream_log once per upstream request, as that request ends (UpstreamEnd), with the
 * request's own stream info (source/common/router/upstream_request.cc). */

/* The logger's config: only ATTEMPT_LOGGER_NAME; any other name is a config error. */
EXPORT const void *envoy_dynamic_module_on_access_logger_config_new(void *config_envoy,
                                                                    envoy_buffer name,
                                                                    envoy_buffer config) {
  static const char token = 0;
  (void)config_envoy;
  (void)config;
  size_t want = sizeof ATTEMPT_LOGGER_NAME - 1;
  if (name.ptr == NULL || name.length != want || memcmp(name.ptr, ATTEMPT_LOGGER_NAME, want)) {
    log_msg(LOG_ERROR, "extproc module: the access logger's logger_name must be \"%s\" "
                       "(the router's upstream_log)", ATTEMPT_LOGGER_NAME);
    return NULL;
  }
  __atomic_store_n(&g_attempt_logger, true, __ATOMIC_RELAXED);
  return &token;
}

EXPORT void envoy_dynamic_module_on_access_logger_config_destroy(const void *config) {
  (void)config;
}

/* One logger per thread; the module's per-worker state is found by the worker index. */
EXPORT const void *envoy_dynamic_module_on_access_logger_new(const void *config, void *logger) {
  static const char token = 0;
  (void)config;
  (void)logger;
  return &token;
}

EXPORT void envoy_dynamic_module_on_access_logger_log(void *logger, const void *module_logger,
                                                      int log_type) {
  (void)module_logger;
  if (log_type == ACCESS_LOG_UPSTREAM_END) attempt_path(logger);
}

EXPORT void envoy_dynamic_module_on_access_logger_destroy(const void *module_logger) {
  (void)module_logger;
}
