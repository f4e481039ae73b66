/*
 * journal.c -- append-only segmented log: record framing, group commit, replay.
 *
 * On disk, a segment is a 32-byte header followed by records, each padded to 8 bytes:
 *
 *   segment header: "RINGMXJ1" | u32 version | u32 0 | u64 sequence | u32 0 | u32 crc(0..28)
 *   record header:  u32 magic | u16 type | u16 version | u32 length | u32 0 |
 *                   u32 data crc (type, version, length, payload) | u32 header crc (0..20)
 *
 * All integers are little-endian. The header crc lets replay trust a length before
 * reading the payload, so after a bad stretch it can scan 8-byte aligned positions for
 * the next record whose header and payload both verify.
 *
 * After replay, appends always go to a new segment (created with the first batch): an
 * old file whose tail was cut is never written again. When a segment has to be
 * quarantined, its readable records and every record of the segments after it are
 * copied into the new segment, so the log keeps its order (a DELETED record never
 * ends up before the MESSAGE it deletes).
 */
#include "queue/journal.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/crc32c.h"

#define SEG_MAGIC            "RINGMXJ1"
#define SEG_VERSION          1
#define SEG_HEADER_LEN       32
#define SEG_NAME_LEN         24 /* "seg-" + 16 hex digits + ".log" */
#define SEG_NAME_SIZE        (SEG_NAME_LEN + sizeof(".corrupt"))
#define REC_MAGIC            0x52584d52u /* "RMXR" */
#define REC_VERSION          1
#define REC_HEADER_LEN       24
#define REC_ALIGN            8
#define JOURNAL_SEGMENTS_MAX 65536 /* segment files one shard may hold at open */
#define JOURNAL_PARTS_MAX    16    /* iovec parts of one record */
#define JOURNAL_REPORT_MAX   (PATH_MAX + 256)

static_assert(SEG_HEADER_LEN % REC_ALIGN == 0, "records start aligned");
static_assert(REC_HEADER_LEN % REC_ALIGN == 0, "payloads start aligned");
static_assert(JOURNAL_RECORD_MAX <= UINT32_MAX - REC_HEADER_LEN - REC_ALIGN, "length fits u32");

struct batch {
	uint8_t *buf;
	size_t len, cap;
	uint64_t number;
	uint64_t segment, offset; /* where the batch will be written */
};

struct journal {
	int dirfd;
	char dir[PATH_MAX];
	uint64_t segment_size;
	bool sync;
	int fd; /* segment being appended to, -1 until the next batch creates one */
	uint64_t fd_segment;
	uint64_t fd_end;                    /* durable end of fd's segment */
	uint64_t fd_filled;                 /* fd holds written zeros up to here */
	uint64_t batch_avg;                 /* bytes per batch, moving average */
	uint64_t tail_segment, tail_offset; /* where the next batch goes */
	struct batch pending, flight;
	bool in_flight;
	uint64_t next_batch;
	uint64_t durable_batch;
	uint64_t disk_bytes;
	uint64_t oldest_segment; /* no segment below it is on disk */
	journal_report_fn report;
	void *report_arg;
};

enum seg_action {
	SEG_KEEP,
	SEG_UNLINK,     /* empty, or copied into the new segment */
	SEG_QUARANTINE, /* renamed to *.corrupt */
};

/* What one walk over a segment found. */
struct seg_scan {
	uint64_t records;
	uint64_t good_end;   /* end of the last valid record */
	uint64_t first_bad;  /* offset of the first invalid byte, if any */
	bool resynced;       /* a bad stretch was followed by a valid record */
	uint64_t tail_bytes; /* bytes after the last valid record, up to the last non-zero one */
};

struct replay {
	struct journal *j;
	const struct journal_params *p;
	char *err;
	size_t err_len;
	uint64_t *seqs;
	enum seg_action *actions;
	size_t count;
	bool copying;  /* records now go to the new segment */
	uint64_t next; /* above every segment name seen */
	uint64_t seq;  /* segment being replayed */
};

typedef int (*record_visit_fn)(struct replay *r, const uint8_t *rec, uint64_t offset);

static void
put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void
put_le32(uint8_t *p, uint32_t v)
{
	put_le16(p, (uint16_t)v);
	put_le16(p + 2, (uint16_t)(v >> 16));
}

static void
put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t)v);
	put_le32(p + 4, (uint32_t)(v >> 32));
}

static uint16_t
get_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t
get_le32(const uint8_t *p)
{
	return get_le16(p) | (uint32_t)get_le16(p + 2) << 16;
}

static uint64_t
get_le64(const uint8_t *p)
{
	return get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static uint64_t
record_framed_len(uint64_t len)
{
	return REC_HEADER_LEN + ((len + REC_ALIGN - 1) & ~(uint64_t)(REC_ALIGN - 1));
}

static bool
record_type_valid(uint32_t type)
{
	return type >= JOURNAL_REC_MESSAGE && type <= JOURNAL_REC_HOLD;
}

/* Fills a record header; data_crc already covers h[4..12) and the payload. */
static void
record_header_fill(uint8_t *h, uint32_t data_crc)
{
	put_le32(h + 12, 0);
	put_le32(h + 16, data_crc);
	put_le32(h + 20, crc32c(0, h, 20));
}

static bool
record_header_valid(const uint8_t *h, uint32_t *length)
{
	if (get_le32(h) != REC_MAGIC || get_le32(h + 20) != crc32c(0, h, 20))
		return false;
	*length = get_le32(h + 8);
	return get_le16(h + 6) == REC_VERSION && get_le32(h + 12) == 0 &&
	       record_type_valid(get_le16(h + 4)) && *length <= JOURNAL_RECORD_MAX;
}

/* Returns the framed length of a valid record at base[off], or 0. */
static uint64_t
record_check(const uint8_t *base, uint64_t size, uint64_t off)
{
	const uint8_t *h = base + off;
	uint32_t len, crc;
	uint64_t framed;

	assert(off <= size);
	if (size - off < REC_HEADER_LEN || !record_header_valid(h, &len))
		return 0;
	framed = record_framed_len(len);
	if (size - off < framed)
		return 0;
	crc = crc32c(crc32c(0, h + 4, 8), h + REC_HEADER_LEN, len);
	return crc == get_le32(h + 16) ? framed : 0;
}

static void
segment_name(uint64_t seq, char name[SEG_NAME_SIZE])
{
	snprintf(name, SEG_NAME_SIZE, "seg-%016" PRIx64 ".log", seq);
}

/* Parses "seg-<16 lowercase hex>.log" (and, with corrupt_ok, "….log.corrupt"). */
static bool
segment_parse(const char *name, bool corrupt_ok, uint64_t *seq)
{
	size_t len = strlen(name);

	if (len != SEG_NAME_LEN && !(corrupt_ok && len == SEG_NAME_SIZE - 1 &&
	                             strcmp(name + SEG_NAME_LEN, ".corrupt") == 0))
		return false;
	if (strncmp(name, "seg-", 4) != 0 || strncmp(name + 20, ".log", 4) != 0)
		return false;
	*seq = 0;
	for (int i = 4; i < 20; i++) {
		char c = name[i];
		int digit = c >= '0' && c <= '9'   ? c - '0'
		            : c >= 'a' && c <= 'f' ? c - 'a' + 10
		                                   : -1;
		if (digit < 0)
			return false;
		*seq = *seq << 4 | (uint64_t)digit;
	}
	return true;
}

static void
segment_header_fill(uint8_t h[SEG_HEADER_LEN], uint64_t seq)
{
	memset(h, 0, SEG_HEADER_LEN);
	memcpy(h, SEG_MAGIC, 8);
	put_le32(h + 8, SEG_VERSION);
	put_le64(h + 16, seq);
	put_le32(h + 28, crc32c(0, h, 28));
}

static bool
segment_header_valid(const uint8_t *h, uint64_t size, uint64_t seq)
{
	return size >= SEG_HEADER_LEN && memcmp(h, SEG_MAGIC, 8) == 0 &&
	       get_le32(h + 28) == crc32c(0, h, 28) && get_le32(h + 8) == SEG_VERSION &&
	       get_le64(h + 16) == seq;
}

static int
pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Reads exactly len bytes; a short file is -EBADMSG (the record is not all there). */
static int
pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EBADMSG;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

__attribute__((format(printf, 3, 4))) static void
journal_report(const struct journal_params *p, const char *name, const char *fmt, ...)
{
	char line[JOURNAL_REPORT_MAX];
	int n;
	va_list ap;

	if (p->report == NULL)
		return;
	n = snprintf(line, sizeof(line), "journal %s/%s: ", p->dir, name);
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	va_start(ap, fmt);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	p->report(p->arg, line);
}

/* Creates segment seq with its header, durable (file and directory entry) before use. */
static int
segment_create(struct journal *j, uint64_t seq)
{
	char name[SEG_NAME_SIZE];
	uint8_t h[SEG_HEADER_LEN];
	int fd, rc;

	segment_name(seq, name);
	fd = openat(j->dirfd, name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	segment_header_fill(h, seq);
	rc = pwrite_full(fd, h, sizeof(h), 0);
	if (rc == 0 && fsync(fd) < 0)
		rc = -errno;
	if (rc == 0 && fsync(j->dirfd) < 0)
		rc = -errno;
	if (rc < 0) {
		close(fd);
		unlinkat(j->dirfd, name, 0);
		return rc;
	}
	if (j->fd >= 0)
		close(j->fd);
	j->fd = fd;
	j->fd_segment = seq;
	j->fd_end = SEG_HEADER_LEN;
	j->fd_filled = SEG_HEADER_LEN;
	j->disk_bytes += SEG_HEADER_LEN;
	return 0;
}

/*
 * Writes zeros ahead of the batch about to go up to end. Overwriting blocks that are
 * already written, inside the file's size, leaves fdatasync only the data to write, no
 * metadata: about half the time of an append here (bench/README.md). That is worth it
 * while batches are small and their syncs are latency; while they are large, bandwidth
 * counts and the zeros would double it, so they append. A failure only means appending.
 * Replay takes zeros after the last record as the end.
 */
static void
segment_fill(struct journal *j, uint64_t end)
{
	static const uint8_t zeros[64 * 1024];
	uint64_t target;

	if (j->fd_filled < j->fd_end) /* appended past the zeros, or records copied in */
		j->fd_filled = j->fd_end;
	if (!j->sync || end <= j->fd_filled || j->batch_avg > JOURNAL_FILL_BATCH_AVG)
		return;
	target = j->fd_filled + JOURNAL_FILL_STEP;
	if (target > j->segment_size)
		target = j->segment_size;
	if (target < end)
		target = end;
	while (j->fd_filled < target) {
		size_t n =
		    target - j->fd_filled < sizeof(zeros) ? target - j->fd_filled : sizeof(zeros);
		if (pwrite_full(j->fd, zeros, n, j->fd_filled) < 0)
			return;
		j->fd_filled += n;
		j->disk_bytes += n;
	}
}

static int
journal_error_map(int rc)
{
	return rc == -ENOSPC || rc == -EDQUOT ? -JOURNAL_ENOSPC : -JOURNAL_EIO;
}

/*
 * Walks the records from SEG_HEADER_LEN, resyncing past bad stretches, and calls visit
 * (if any) for each valid record.
 */
static int
segment_walk(struct replay *r, const uint8_t *map, uint64_t size, record_visit_fn visit,
             struct seg_scan *scan)
{
	uint64_t off = SEG_HEADER_LEN;

	memset(scan, 0, sizeof(*scan));
	scan->good_end = SEG_HEADER_LEN;
	while (off < size) {
		uint64_t framed = record_check(map, size, off);
		if (framed == 0) {
			uint64_t next = off + REC_ALIGN;
			while (next < size && record_check(map, size, next) == 0)
				next += REC_ALIGN;
			if (!scan->resynced && scan->tail_bytes == 0)
				scan->first_bad = off;
			if (next >= size) {
				/* zeros written ahead (segment_fill) are no torn write */
				uint64_t end = size;
				while (end > off && map[end - 1] == 0)
					end--;
				scan->tail_bytes = end - off;
				break;
			}
			scan->resynced = true;
			off = next;
			continue;
		}
		if (visit != NULL) {
			int rc = visit(r, map + off, off);
			if (rc < 0)
				return rc;
		}
		scan->records++;
		off += framed;
		scan->good_end = off;
	}
	return 0;
}

static int
replay_deliver(struct replay *r, const uint8_t *rec, const struct journal_loc *loc)
{
	char name[SEG_NAME_SIZE];
	int rc;

	rc = r->p->replay(r->p->arg, get_le16(rec + 4), rec + REC_HEADER_LEN, loc->length, loc);
	if (rc == 0)
		return 0;
	segment_name(r->seq, name);
	if (rc == -EINVAL) {
		/* It passed the crc, so it is what some version wrote: keep it, skip it. */
		journal_report(r->p, name, "record at offset %" PRIu64 " of type %u rejected",
		               loc->offset, get_le16(rec + 4));
		return 0;
	}
	snprintf(r->err, r->err_len, "journal %s/%s: replay failed: %s", r->p->dir, name,
	         strerror(-rc));
	return rc;
}

static int
visit_in_place(struct replay *r, const uint8_t *rec, uint64_t offset)
{
	struct journal_loc loc = {r->seq, offset, get_le32(rec + 8)};

	return replay_deliver(r, rec, &loc);
}

static int
visit_copy(struct replay *r, const uint8_t *rec, uint64_t offset)
{
	struct journal *j = r->j;
	struct journal_loc loc = {j->fd_segment, j->fd_end, get_le32(rec + 8)};
	uint64_t framed = record_framed_len(loc.length);
	int rc = pwrite_full(j->fd, rec, framed, j->fd_end);

	if (rc < 0) {
		snprintf(r->err, r->err_len, "journal %s: copying records: %s", j->dir,
		         strerror(-rc));
		return rc;
	}
	j->fd_end += framed;
	j->disk_bytes += framed;
	return replay_deliver(r, rec, &loc);
}

/* A bad tail in the last segment is a write the crash interrupted: cut it off. */
static int
segment_cut_tail(struct replay *r, int fd, const struct seg_scan *scan, const char *name)
{
	if (ftruncate(fd, (off_t)scan->good_end) < 0 || fsync(fd) < 0) {
		snprintf(r->err, r->err_len, "journal %s/%s: cutting torn tail: %s", r->p->dir,
		         name, strerror(errno));
		return -errno;
	}
	journal_report(r->p, name, "torn tail cut: %" PRIu64 " bytes", scan->tail_bytes);
	return 0;
}

static int
segment_replay_map(struct replay *r, size_t i, int fd, const uint8_t *map, uint64_t size)
{
	char name[SEG_NAME_SIZE];
	struct seg_scan scan;
	bool last = i + 1 == r->count, corrupt;
	int rc;

	segment_name(r->seqs[i], name);
	segment_walk(r, map, size, NULL, &scan);
	corrupt = !segment_header_valid(map, size, r->seqs[i]) || scan.resynced ||
	          (scan.tail_bytes > 0 && !last);
	if (corrupt && scan.records > 0 && !r->copying) {
		rc = segment_create(r->j, r->next);
		if (rc < 0) {
			snprintf(r->err, r->err_len, "journal %s: creating a segment: %s",
			         r->p->dir, strerror(-rc));
			return rc;
		}
		r->copying = true;
	}
	rc = segment_walk(r, map, size, r->copying ? visit_copy : visit_in_place, &scan);
	if (rc < 0)
		return rc;
	if (corrupt) {
		journal_report(r->p, name,
		               "corrupt at offset %" PRIu64 ", %" PRIu64
		               " records recovered, quarantined as %s.corrupt",
		               scan.first_bad, scan.records, name);
		r->actions[i] = SEG_QUARANTINE;
		return 0;
	}
	if (scan.tail_bytes > 0) {
		rc = segment_cut_tail(r, fd, &scan, name);
		if (rc < 0)
			return rc;
	}
	r->actions[i] = r->copying || scan.records == 0 ? SEG_UNLINK : SEG_KEEP;
	if (r->actions[i] == SEG_KEEP) /* the file's size: zeros written ahead count too */
		r->j->disk_bytes += scan.tail_bytes > 0 ? scan.good_end : size;
	return 0;
}

static int
segment_replay(struct replay *r, size_t i)
{
	char name[SEG_NAME_SIZE];
	struct stat st;
	void *map = NULL;
	int fd, rc;

	r->seq = r->seqs[i];
	segment_name(r->seq, name);
	fd = openat(r->j->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	if (st.st_size > 0) {
		map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			rc = -errno;
			goto fail;
		}
	}
	rc = segment_replay_map(r, i, fd, map ? map : "", (uint64_t)st.st_size);
	if (map != NULL)
		munmap(map, (size_t)st.st_size);
	close(fd);
	return rc;
fail:
	snprintf(r->err, r->err_len, "journal %s/%s: %s", r->p->dir, name, strerror(-rc));
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Carries out the quarantines and removals once the copied records are durable. */
static int
replay_finish(struct replay *r)
{
	struct journal *j = r->j;
	char name[SEG_NAME_SIZE], bad[SEG_NAME_SIZE];
	int rc = 0;

	if (r->copying && fsync(j->fd) < 0)
		rc = -errno;
	for (size_t i = 0; i < r->count && rc == 0; i++) {
		segment_name(r->seqs[i], name);
		memcpy(bad, name, SEG_NAME_LEN);
		memcpy(bad + SEG_NAME_LEN, ".corrupt", sizeof(".corrupt"));
		if (r->actions[i] == SEG_QUARANTINE && renameat(j->dirfd, name, j->dirfd, bad) < 0)
			rc = -errno;
		if (r->actions[i] == SEG_UNLINK && unlinkat(j->dirfd, name, 0) < 0)
			rc = -errno;
	}
	if (rc == 0 && fsync(j->dirfd) < 0)
		rc = -errno;
	if (rc < 0)
		snprintf(r->err, r->err_len, "journal %s: finishing replay: %s", j->dir,
		         strerror(-rc));
	return rc;
}

static int
seq_compare(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Lists seg-*.log in sequence order; *next is above every name seen, quarantined too. */
static int
segments_list(struct journal *j, uint64_t **seqs, size_t *count, uint64_t *next)
{
	size_t cap = 0;
	struct dirent *de;
	uint64_t seq;
	int fd = openat(j->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;

	if (d == NULL) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	*next = 1;
	while ((de = readdir(d)) != NULL) {
		if (!segment_parse(de->d_name, true, &seq))
			continue;
		if (seq >= *next)
			*next = seq + 1;
		if (!segment_parse(de->d_name, false, &seq))
			continue;
		if (*count == JOURNAL_SEGMENTS_MAX) {
			closedir(d);
			return -EMFILE;
		}
		if (*count == cap) {
			uint64_t *grown = realloc(*seqs, (cap ? cap * 2 : 16) * sizeof(**seqs));
			if (grown == NULL) {
				closedir(d);
				return -ENOMEM;
			}
			*seqs = grown;
			cap = cap ? cap * 2 : 16;
		}
		(*seqs)[(*count)++] = seq;
	}
	closedir(d);
	if (*count > 1)
		qsort(*seqs, *count, sizeof(**seqs), seq_compare);
	return 0;
}

static int
journal_replay_all(struct journal *j, const struct journal_params *p, char *err, size_t err_len)
{
	struct replay r = {.j = j, .p = p, .err = err, .err_len = err_len};
	int rc = segments_list(j, &r.seqs, &r.count, &r.next);

	if (rc < 0) {
		snprintf(err, err_len, "journal %s: listing segments: %s", j->dir, strerror(-rc));
		goto out;
	}
	r.actions = calloc(r.count ? r.count : 1, sizeof(*r.actions));
	if (r.actions == NULL) {
		rc = -ENOMEM;
		snprintf(err, err_len, "journal %s: out of memory", j->dir);
		goto out;
	}
	for (size_t i = 0; i < r.count && rc == 0; i++)
		rc = segment_replay(&r, i);
	if (rc == 0)
		rc = replay_finish(&r);
	if (rc == 0 && !r.copying) {
		j->tail_segment = r.next;
		j->tail_offset = SEG_HEADER_LEN;
	}
	if (rc == 0 && r.copying) {
		j->tail_segment = j->fd_segment;
		j->tail_offset = j->fd_end;
	}
	j->oldest_segment = r.count > 0 ? r.seqs[0] : j->tail_segment;
out:
	free(r.seqs);
	free(r.actions);
	return rc;
}

/* mkdir -p with mode 0750 for the parts that are missing. */
static int
dir_create(char *path)
{
	for (char *s = strchr(path + 1, '/'); s != NULL; s = strchr(s + 1, '/')) {
		*s = '\0';
		int rc = mkdir(path, 0750) < 0 && errno != EEXIST ? -errno : 0;
		*s = '/';
		if (rc < 0)
			return rc;
	}
	return mkdir(path, 0750) < 0 && errno != EEXIST ? -errno : 0;
}

int
journal_open(const struct journal_params *params, struct journal **out, char *err, size_t err_len)
{
	struct journal *j;
	int rc;

	assert(params != NULL);
	assert(params->dir != NULL);
	assert(params->replay != NULL);
	assert(out != NULL);
	j = calloc(1, sizeof(*j));
	if (j == NULL) {
		snprintf(err, err_len, "journal %s: out of memory", params->dir);
		return -ENOMEM;
	}
	j->fd = -1;
	j->next_batch = 1;
	j->sync = params->sync;
	j->report = params->report;
	j->report_arg = params->arg;
	j->segment_size = params->segment_size ? params->segment_size : JOURNAL_SEGMENT_SIZE;
	if (strlen(params->dir) >= sizeof(j->dir)) {
		rc = -ENAMETOOLONG;
		snprintf(err, err_len, "journal %s: path too long", params->dir);
		goto fail;
	}
	strcpy(j->dir, params->dir);
	rc = dir_create(j->dir);
	j->dirfd = rc < 0 ? -1 : open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rc < 0 || j->dirfd < 0) {
		rc = rc < 0 ? rc : -errno;
		snprintf(err, err_len, "journal %s: cannot create or open the directory: %s",
		         j->dir, strerror(-rc));
		goto fail;
	}
	rc = journal_replay_all(j, params, err, err_len);
	if (rc < 0)
		goto fail;
	*out = j;
	return 0;
fail:
	journal_close(j);
	return rc;
}

void
journal_close(struct journal *j)
{
	if (j == NULL)
		return;
	assert(!j->in_flight);
	if (j->fd >= 0)
		close(j->fd);
	if (j->dirfd >= 0)
		close(j->dirfd);
	free(j->pending.buf);
	free(j->flight.buf);
	free(j);
}

static int
batch_reserve(struct batch *b, size_t extra)
{
	size_t cap = b->cap ? b->cap : 64 * 1024;
	uint8_t *grown;

	if (b->len + extra <= b->cap)
		return 0;
	while (cap < b->len + extra)
		cap *= 2;
	grown = realloc(b->buf, cap);
	if (grown == NULL)
		return -ENOMEM;
	b->buf = grown;
	b->cap = cap;
	return 0;
}

/* Numbers the batch and fixes where it goes, rotating when the segment is full. */
static void
batch_start(struct journal *j, struct batch *b)
{
	if (j->tail_offset >= j->segment_size && j->tail_offset > SEG_HEADER_LEN) {
		j->tail_segment++;
		j->tail_offset = SEG_HEADER_LEN;
	}
	b->segment = j->tail_segment;
	b->offset = j->tail_offset;
	b->number = j->next_batch++;
}

int64_t
journal_append(struct journal *j, enum journal_rec_type type, const struct iovec *parts,
               unsigned part_count, struct journal_loc *loc)
{
	struct batch *b = &j->pending;
	uint32_t len = 0, crc, check_len;
	uint64_t framed;
	uint8_t *h;

	assert(loc != NULL);
	assert(parts != NULL || part_count == 0);
	assert(part_count <= JOURNAL_PARTS_MAX);
	assert(record_type_valid(type));
	for (unsigned i = 0; i < part_count; i++) {
		if (parts[i].iov_len > JOURNAL_RECORD_MAX - len)
			return -JOURNAL_ETOOBIG;
		len += (uint32_t)parts[i].iov_len;
	}
	framed = record_framed_len(len);
	if (b->len > 0 && b->len + framed > JOURNAL_BATCH_MAX)
		return -JOURNAL_EBUSY;
	if (batch_reserve(b, framed) < 0)
		return -ENOMEM;
	if (b->len == 0)
		batch_start(j, b);
	h = b->buf + b->len;
	put_le32(h, REC_MAGIC);
	put_le16(h + 4, (uint16_t)type);
	put_le16(h + 6, REC_VERSION);
	put_le32(h + 8, len);
	crc = crc32c(0, h + 4, 8);
	for (unsigned i = 0, at = REC_HEADER_LEN; i < part_count; at += parts[i++].iov_len) {
		memcpy(h + at, parts[i].iov_base, parts[i].iov_len);
		crc = crc32c(crc, parts[i].iov_base, parts[i].iov_len);
	}
	memset(h + REC_HEADER_LEN + len, 0, framed - REC_HEADER_LEN - len);
	record_header_fill(h, crc);
	assert(record_header_valid(h, &check_len));
	assert(check_len == len);
	*loc = (struct journal_loc){b->segment, b->offset + b->len, len};
	b->len += framed;
	j->tail_offset = b->offset + b->len;
	return (int64_t)b->number;
}

bool
journal_batch_ready(const struct journal *j)
{
	return j->pending.len > 0 && !j->in_flight;
}

int
journal_batch_begin(struct journal *j, struct journal_write *w)
{
	struct batch spare;
	int rc;

	assert(!j->in_flight);
	assert(j->pending.len > 0);
	if (j->fd < 0 || j->fd_segment != j->pending.segment) {
		rc = segment_create(j, j->pending.segment);
		if (rc < 0) {
			/* Nothing was written: the batch is dropped, its segment retried. */
			j->pending.len = 0;
			j->tail_segment = j->pending.segment;
			j->tail_offset = SEG_HEADER_LEN;
			return journal_error_map(rc);
		}
	}
	assert(j->pending.segment == j->fd_segment);
	assert(j->pending.offset == j->fd_end);
	j->batch_avg = j->batch_avg > 0 ? (j->batch_avg * 7 + j->pending.len) / 8 : j->pending.len;
	segment_fill(j, j->pending.offset + j->pending.len);
	spare = j->flight;
	j->flight = j->pending;
	j->pending = spare;
	j->pending.len = 0;
	j->in_flight = true;
	*w = (struct journal_write){
	    .fd = j->fd,
	    .buf = j->flight.buf,
	    .len = j->flight.len,
	    .offset = j->flight.offset,
	    .sync = j->sync,
	    .batch = j->flight.number,
	};
	return 0;
}

/* After a failed write or sync the page cache can't be trusted: leave the segment. */
static void
batch_fail(struct journal *j)
{
	char line[JOURNAL_REPORT_MAX];

	if (j->fd_filled > j->flight.offset) /* the zeros go with the failed batch */
		j->disk_bytes -= j->fd_filled - j->flight.offset;
	if (ftruncate(j->fd, (off_t)j->flight.offset) < 0 && j->report != NULL) {
		/* The failed batch may then survive in this file: replay would bring its
		 * messages back, a duplicate delivery, never a loss. */
		snprintf(line, sizeof(line), "journal %s: cutting a failed batch: %s", j->dir,
		         strerror(errno));
		j->report(j->report_arg, line);
	}
	close(j->fd);
	j->fd = -1;
	j->pending.len = 0;
	j->tail_segment = j->fd_segment + 1;
	j->tail_offset = SEG_HEADER_LEN;
}

int
journal_batch_end(struct journal *j, int res)
{
	struct batch *b = &j->flight;

	assert(j->in_flight);
	assert(res <= 0);
	j->in_flight = false;
	if (res < 0) {
		batch_fail(j);
		b->len = 0;
		return journal_error_map(res);
	}
	assert(b->offset == j->fd_end);
	assert(b->number > j->durable_batch);
	uint64_t size = j->fd_end > j->fd_filled ? j->fd_end : j->fd_filled; /* before it */
	j->fd_end += b->len;
	j->disk_bytes += j->fd_end > size ? j->fd_end - size : 0;
	j->durable_batch = b->number;
	b->len = 0;
	if (b->cap > JOURNAL_BATCH_MAX) {
		/* One huge record should not pin its buffer for the worker's lifetime. */
		free(b->buf);
		b->buf = NULL;
		b->cap = 0;
	}
	return 0;
}

uint64_t
journal_durable_batch(const struct journal *j)
{
	return j->durable_batch;
}

int
journal_read(struct journal *j, const struct journal_loc *loc, void *buf, size_t len)
{
	char name[SEG_NAME_SIZE];
	uint8_t h[REC_HEADER_LEN];
	uint32_t length = 0;
	bool own;
	int fd = j->fd, rc;

	assert(loc != NULL);
	own = j->fd < 0 || loc->segment != j->fd_segment;
	if (len < loc->length)
		return -EINVAL;
	if (loc->segment == j->fd_segment && j->fd >= 0 && loc->offset >= j->fd_end)
		return -EAGAIN; /* not written yet */
	if (own) {
		segment_name(loc->segment, name);
		fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
	}
	rc = pread_full(fd, h, sizeof(h), loc->offset);
	if (rc == 0 && (!record_header_valid(h, &length) || length != loc->length))
		rc = -EBADMSG;
	if (rc == 0)
		rc = pread_full(fd, buf, length, loc->offset + REC_HEADER_LEN);
	if (rc == 0 && crc32c(crc32c(0, h + 4, 8), buf, length) != get_le32(h + 16))
		rc = -EBADMSG;
	if (own)
		close(fd);
	return rc;
}

uint64_t
journal_current_segment(const struct journal *j)
{
	return j->tail_segment;
}

int
journal_segment_delete(struct journal *j, uint64_t segment)
{
	char name[SEG_NAME_SIZE];
	struct stat st;

	if (segment >= j->tail_segment || (j->fd >= 0 && segment == j->fd_segment))
		return -EBUSY;
	segment_name(segment, name);
	if (fstatat(j->dirfd, name, &st, 0) < 0 || unlinkat(j->dirfd, name, 0) < 0) {
		int e = errno;
		if (e == ENOENT && segment == j->oldest_segment)
			j->oldest_segment++; /* a gap left by replay (quarantined, empty) */
		return -e;
	}
	if (segment == j->oldest_segment)
		j->oldest_segment++;
	j->disk_bytes -=
	    (uint64_t)st.st_size < j->disk_bytes ? (uint64_t)st.st_size : j->disk_bytes;
	/* Without this, a crash could bring back messages whose completion records are
	 * already gone with other deleted segments. */
	return fsync(j->dirfd) < 0 ? -errno : 0;
}

uint64_t
journal_oldest_segment(const struct journal *j)
{
	return j->oldest_segment;
}

uint64_t
journal_disk_bytes(const struct journal *j)
{
	return j->disk_bytes;
}
