/* net/codec.h: the one binary codec of evowidth's files (owner: net/, prefix net_wr_ / net_rd_).
 *
 * Every binary layout evowidth writes is built from these pieces: the checkpoint and the
 * compressed export (net/ckpt.c, net/export.c), the trainer state (daemon/state.c), the
 * adaptation state (svd_adapt/policy.c) and the policy state (daemon/adapt.c).
 *  - A writer (struct net_wr) appends fields one by one, native little-endian (files carry
 *    a byte-order probe). A failed allocation sets `oom` and later puts do nothing, so a
 *    writer checks once at the end.
 *  - A reader (struct net_rd) is a bounds-checked cursor over bytes it does not own: a read
 *    past the end sets `bad` and yields zeros, never touching memory outside the buffer, so
 *    a parser checks once after a group of fields. Counts read with net_rd_count are bounded
 *    by what is left, so a hostile length can neither overflow nor drive an allocation.
 *  - Chunk framing: `char tag[4] | u64 length | payload`; net_rd_chunk hands out a reader
 *    bounded by the chunk.
 * Formats are written field by field in a documented order, never as a struct image, and
 * carry their own version number; a reader of version N keeps reading the older ones.
 * Nothing here logs or exits; the only global state is the write layer (net_set_io), a
 * test seam. */
#ifndef NET_CODEC_H
#define NET_CODEC_H

#include <stddef.h>
#include <stdint.h>

// ---- writing --------------------------------------------------------------------------

/* Zero-initialise ({0}); p is malloc'ed and owned by the writer's user (net_wr_free). */
struct net_wr {
    unsigned char *p;
    size_t len, cap;
    int oom;
};
void net_wr_bytes(struct net_wr *w, const void *src, size_t n);
void net_wr_u8(struct net_wr *w, unsigned v);
void net_wr_u32(struct net_wr *w, uint32_t v);
void net_wr_u64(struct net_wr *w, uint64_t v);
void net_wr_f32(struct net_wr *w, float v);
void net_wr_f64(struct net_wr *w, double v);
/* n floats, back to back. */
void net_wr_f32s(struct net_wr *w, const float *v, size_t n);
/* A string as u64 length | bytes (no terminator). */
void net_wr_str(struct net_wr *w, const char *s);
/* Starts a chunk with a four-character tag; returns the position net_wr_end patches. */
size_t net_wr_begin(struct net_wr *w, const char *tag);
void net_wr_end(struct net_wr *w, size_t at);
/* Frees the buffer and zeroes the writer; NULL is a no-op. */
void net_wr_free(struct net_wr *w);

// ---- reading --------------------------------------------------------------------------

/* A cursor over p[pos .. len); p is borrowed. */
struct net_rd {
    const unsigned char *p;
    size_t len, pos;
    int bad;
};
/* A reader over len bytes at p. */
struct net_rd net_rd_make(const void *p, size_t len);
/* Bytes left (0 once bad). */
size_t net_rd_left(const struct net_rd *r);
/* 1 when every field read so far was there and nothing is left over. */
int net_rd_done(const struct net_rd *r);
void net_rd_bytes(struct net_rd *r, void *dst, size_t n);
/* A borrowed pointer to the next n bytes (skipped), or NULL (and bad) when fewer are left. */
const void *net_rd_view(struct net_rd *r, size_t n);
unsigned net_rd_u8(struct net_rd *r);
uint32_t net_rd_u32(struct net_rd *r);
uint64_t net_rd_u64(struct net_rd *r);
float net_rd_f32(struct net_rd *r);
double net_rd_f64(struct net_rd *r);
/* n floats into dst; all or nothing (dst zeroed and bad when fewer are left). */
void net_rd_f32s(struct net_rd *r, float *dst, size_t n);
/* A u64 count of elements of at least elem_bytes bytes each that must follow: bad (and 0)
 * when it exceeds max or when the rest of the buffer cannot hold that many. */
uint64_t net_rd_count(struct net_rd *r, uint64_t max, size_t elem_bytes);
/* A string written by net_wr_str, as a malloc'ed NUL-terminated copy (the caller frees);
 * NULL when bad, longer than max, or out of memory (*oom set when oom is not NULL). */
char *net_rd_str(struct net_rd *r, size_t max, int *oom);
/* The next chunk: its tag (NUL-terminated) and a reader over its payload, and r moves past
 * it. Returns 1, 0 when r is at its end, or -1 (r bad) when the framing is truncated. */
int net_rd_chunk(struct net_rd *r, char tag[5], struct net_rd *body);

// ---- whole files ----------------------------------------------------------------------

/* CRC-32 (zlib's polynomial) of any length. */
uint32_t net_crc32(const void *p, size_t len);
/* 1 when the last four bytes of buf are the CRC-32 of everything before them. */
int net_crc_ok(const unsigned char *buf, size_t len);
/* The file operations behind every durable write: net_write_atomic (so every format:
 * checkpoints, exports, trainer / adaptation / policy state, the daemon's history) and the
 * daemon's state-dir logs. They are the system calls unless a test installs others, to
 * inject faults (ENOSPC) or to record which bytes were fsynced and replay a power loss. A
 * NULL member is the system call. net_set_io is not thread-safe: call it before any writer
 * runs; NULL restores the system calls. */
struct net_io {
    int (*open)(const char *path, int flags, unsigned mode);
    long (*write)(int fd, const void *p, size_t n);
    int (*fsync)(int fd);
    int (*close)(int fd);
    int (*rename)(const char *from, const char *to);
    int (*unlink)(const char *path);
    int (*link)(const char *from, const char *to);
    int (*ftruncate)(int fd, long long len);
};
void net_set_io(const struct net_io *io);
/* The operations in force (never NULL; every member set). */
const struct net_io *net_io(void);
/* Writes path.tmp, fsyncs, renames over path, fsyncs the directory (all through net_io());
 * a failure leaves neither path.tmp nor a partial path. err names the path. */
int net_write_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen);
/* Reads a whole regular file into a malloc'ed buffer (one spare byte; the caller frees).
 * FIFOs, directories and devices are refused. err names the path. */
int net_read_file(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen);

#endif
