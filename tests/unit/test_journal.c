/*
 * test_journal.c -- journal framing, group commit, replay and recovery, and crc32c.
 * The test plays the worker: it writes each batch with pwrite + fdatasync itself.
 */
#include "queue/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/crc32c.h"
#include "tests/unit/check.h"

#define RECS_MAX    4096
#define REPORTS_MAX 64

struct rec {
	enum journal_rec_type type;
	uint8_t *payload;
	size_t len;
	struct journal_loc loc;
};

/* What one replay saw. */
struct seen {
	struct rec recs[RECS_MAX];
	size_t count;
	char reports[REPORTS_MAX][512];
	size_t report_count;
	int fail_with; /* returned for every record when set */
};

static char base_dir[64];

static int
seen_replay(void *arg, enum journal_rec_type type, const void *payload, size_t len,
            const struct journal_loc *loc)
{
	struct seen *s = arg;
	struct rec *r;

	if (s->fail_with != 0)
		return s->fail_with;
	if (s->count == RECS_MAX)
		return -ENOSPC;
	r = &s->recs[s->count++];
	r->type = type;
	r->len = len;
	r->loc = *loc;
	r->payload = malloc(len ? len : 1);
	memcpy(r->payload, payload, len);
	return 0;
}

static void
seen_report(void *arg, const char *line)
{
	struct seen *s = arg;

	if (s->report_count < REPORTS_MAX)
		snprintf(s->reports[s->report_count++], sizeof(s->reports[0]), "%s", line);
}

static void
seen_reset(struct seen *s)
{
	for (size_t i = 0; i < s->count; i++)
		free(s->recs[i].payload);
	memset(s, 0, sizeof(*s));
}

static bool
seen_reported(const struct seen *s, const char *what)
{
	for (size_t i = 0; i < s->report_count; i++)
		if (strstr(s->reports[i], what) != NULL)
			return true;
	return false;
}

static struct journal *
jopen(const char *dir, struct seen *s, uint64_t segment_size)
{
	struct journal_params p = {
	    .dir = dir,
	    .segment_size = segment_size,
	    .sync = true,
	    .replay = seen_replay,
	    .report = seen_report,
	    .arg = s,
	};
	struct journal *j = NULL;
	char err[512] = "";

	seen_reset(s);
	if (journal_open(&p, &j, err, sizeof(err)) < 0) {
		printf("journal_open %s: %s\n", dir, err);
		return NULL;
	}
	return j;
}

/* Deterministic payload of record i: its length varies, so padding is exercised. */
static size_t
payload_make(unsigned i, uint8_t *buf)
{
	size_t len = (i * 37) % 1000;

	for (size_t k = 0; k < len; k++)
		buf[k] = (uint8_t)(i * 7 + k);
	return len;
}

static int64_t
append_one(struct journal *j, unsigned i, struct journal_loc *loc)
{
	uint8_t buf[1000];
	size_t len = payload_make(i, buf);
	struct iovec iov[2] = {{buf, len / 2}, {buf + len / 2, len - len / 2}};

	return journal_append(j, JOURNAL_REC_MESSAGE + i % 5, iov, 2, loc);
}

/* Does what the worker does: write the batch, sync it, report the result. */
static int
write_batch(struct journal *j)
{
	struct journal_write w;
	int rc = journal_batch_begin(j, &w);

	if (rc < 0)
		return rc;
	rc = pwrite(w.fd, w.buf, w.len, (off_t)w.offset) == (ssize_t)w.len ? 0 : -EIO;
	if (rc == 0 && w.sync && fdatasync(w.fd) < 0)
		rc = -errno;
	return journal_batch_end(j, rc);
}

static bool
loc_eq(const struct journal_loc *a, const struct journal_loc *b)
{
	return a->segment == b->segment && a->offset == b->offset && a->length == b->length;
}

/* The end of a record's framing: header, payload, padding to 8. */
static off_t
rec_end(const struct journal_loc *loc)
{
	return (off_t)(loc->offset + 24 + ((loc->length + 7) & ~7u));
}

static bool
rec_is(const struct rec *r, unsigned i)
{
	uint8_t buf[1000];
	size_t len = payload_make(i, buf);

	return r->type == JOURNAL_REC_MESSAGE + i % 5 && r->len == len &&
	       memcmp(r->payload, buf, len) == 0;
}

/* True when the replay saw exactly records first..first+count-1 except skip (or -1). */
static bool
seen_records(const struct seen *s, unsigned first, unsigned count, int skip)
{
	size_t k = 0;

	for (unsigned i = first; i < first + count; i++) {
		if ((int)i == skip)
			continue;
		if (k >= s->count || !rec_is(&s->recs[k], i))
			return false;
		k++;
	}
	return k == s->count;
}

static int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void
dir_fresh(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", base_dir, name);
	nftw(out, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static char *
seg_path(const char *dir, uint64_t seq, const char *suffix)
{
	static char path[256];

	snprintf(path, sizeof(path), "%s/seg-%016llx.log%s", dir, (unsigned long long)seq, suffix);
	return path;
}

static bool
file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

static off_t
file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? st.st_size : -1;
}

static uint8_t *
file_read(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = malloc(1 << 20);

	*len = f ? fread(buf, 1, 1 << 20, f) : 0;
	if (f)
		fclose(f);
	return buf;
}

static void
file_write(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");

	fwrite(buf, 1, len, f);
	fclose(f);
}

static unsigned
dir_count(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	unsigned n = 0;

	while (d && (de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name), sl = strlen(suffix);
		n += len > sl && strcmp(de->d_name + len - sl, suffix) == 0;
	}
	if (d)
		closedir(d);
	return n;
}

/* Writes records first..first+count-1 in batches of `per` records each. */
static void
fill(struct journal *j, unsigned first, unsigned count, unsigned per)
{
	struct journal_loc loc;

	for (unsigned i = first; i < first + count; i++) {
		CHECK(append_one(j, i, &loc) > 0);
		if ((i - first + 1) % per == 0 || i + 1 == first + count)
			CHECK(write_batch(j) == 0);
	}
}

static void
test_crc32c(void)
{
	uint8_t buf[4096];

	CHECK(crc32c(0, "123456789", 9) == 0xE3069283);
	CHECK(crc32c_sw(0, "123456789", 9) == 0xE3069283);
	CHECK(crc32c(crc32c(0, "1234", 4), "56789", 5) == 0xE3069283);
	CHECK(crc32c(0, NULL, 0) == 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 131 + (i >> 7));
	for (size_t off = 0; off < 9; off++)
		for (size_t len = 0; len < 200; len += 7)
			CHECK(crc32c(7, buf + off, len) == crc32c_sw(7, buf + off, len));
}

static void
test_round_trip(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc locs[1000];
	struct journal *j;
	uint8_t buf[1000], out[1000];

	dir_fresh(dir, sizeof(dir), "rt/shard0");
	j = jopen(dir, &s, 0);
	CHECK(j != NULL);
	CHECK(s.count == 0);
	for (unsigned i = 0; i < 1000; i++) {
		CHECK(append_one(j, i, &locs[i]) > 0);
		if (i % 10 == 9)
			CHECK(write_batch(j) == 0);
	}
	CHECK(journal_durable_batch(j) == 100);
	CHECK(journal_read(j, &locs[123], out, sizeof(out)) == 0);
	CHECK(memcmp(out, buf, payload_make(123, buf)) == 0);
	CHECK(journal_read(j, &locs[5], out, locs[5].length - 1) == -EINVAL || locs[5].length == 0);
	CHECK(journal_disk_bytes(j) == (uint64_t)file_size(seg_path(dir, 1, "")));
	journal_close(j);

	j = jopen(dir, &s, 0);
	CHECK(j != NULL);
	CHECK(seen_records(&s, 0, 1000, -1));
	CHECK(s.report_count == 0);
	for (unsigned i = 0; i < s.count; i++)
		CHECK(loc_eq(&s.recs[i].loc, &locs[i]));
	/* Reading a record from a segment other than the one being written. */
	CHECK(journal_read(j, &locs[999], out, sizeof(out)) == 0);
	CHECK(memcmp(out, buf, payload_make(999, buf)) == 0);
	journal_close(j);
	seen_reset(&s);
}

static void
test_group_commit(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc a, b, c;
	struct journal_write w;
	struct journal *j;
	uint8_t out[1000];
	int64_t na, nb, nc;

	dir_fresh(dir, sizeof(dir), "group");
	j = jopen(dir, &s, 0);
	CHECK(!journal_batch_ready(j));
	na = append_one(j, 1, &a);
	CHECK(na == 1);
	CHECK(journal_batch_ready(j));
	CHECK(journal_batch_begin(j, &w) == 0);
	CHECK(w.batch == 1);
	CHECK(w.sync);
	nb = append_one(j, 2, &b);
	nc = append_one(j, 3, &c);
	CHECK(nb == 2);
	CHECK(nc == 2);
	CHECK(!journal_batch_ready(j)); /* one batch in flight at a time */
	CHECK(journal_read(j, &b, out, sizeof(out)) == -EAGAIN);
	CHECK(pwrite(w.fd, w.buf, w.len, (off_t)w.offset) == (ssize_t)w.len);
	CHECK(journal_batch_end(j, 0) == 0);
	CHECK(journal_durable_batch(j) == 1);
	CHECK(journal_batch_ready(j));
	CHECK(journal_batch_begin(j, &w) == 0);
	CHECK(w.batch == 2);
	CHECK(w.offset == b.offset);
	CHECK(w.len == (size_t)rec_end(&c) - b.offset);
	CHECK(pwrite(w.fd, w.buf, w.len, (off_t)w.offset) == (ssize_t)w.len);
	CHECK(journal_batch_end(j, 0) == 0);
	CHECK(journal_durable_batch(j) == 2);
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 1, 3, -1));
	journal_close(j);
	seen_reset(&s);
}

static void
test_limits(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc loc;
	struct journal *j;
	size_t big_len = JOURNAL_BATCH_MAX + 4096;
	uint8_t *big = calloc(1, big_len);
	struct iovec iov = {big, 1024 * 1024};
	int64_t rc = 0;
	unsigned n = 0;

	dir_fresh(dir, sizeof(dir), "limits");
	j = jopen(dir, &s, 0);
	while (n < 100 && (rc = journal_append(j, JOURNAL_REC_MESSAGE, &iov, 1, &loc)) > 0)
		n++;
	CHECK(rc == -JOURNAL_EBUSY);
	CHECK(n == JOURNAL_BATCH_MAX / (1024 * 1024 + 24));
	CHECK(write_batch(j) == 0);
	/* A lone record over JOURNAL_BATCH_MAX still goes, in a batch of its own. */
	iov.iov_len = big_len;
	CHECK(journal_append(j, JOURNAL_REC_MESSAGE, &iov, 1, &loc) > 0);
	iov.iov_len = 1;
	CHECK(journal_append(j, JOURNAL_REC_MESSAGE, &iov, 1, &loc) == -JOURNAL_EBUSY);
	CHECK(write_batch(j) == 0);
	iov.iov_len = (size_t)JOURNAL_RECORD_MAX + 1; /* refused before anything is copied */
	CHECK(journal_append(j, JOURNAL_REC_MESSAGE, &iov, 1, &loc) == -JOURNAL_ETOOBIG);
	CHECK(!journal_batch_ready(j));
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(s.count == n + 1);
	CHECK(s.count > 0 && s.recs[s.count - 1].len == big_len);
	journal_close(j);
	seen_reset(&s);
	free(big);
}

/* Flips one byte at offset `at` of segment 1 in dir. */
static void
byte_flip(const char *dir, uint64_t at)
{
	int fd = open(seg_path(dir, 1, ""), O_RDWR);
	uint8_t b = 0;

	CHECK(pread(fd, &b, 1, (off_t)at) == 1);
	b ^= 0x40;
	CHECK(pwrite(fd, &b, 1, (off_t)at) == 1);
	close(fd);
}

static bool
zeros_at(const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (p[i] != 0)
			return false;
	}
	return true;
}

/*
 * Small batches go over zeros written ahead (so fdatasync has no metadata to write):
 * replay takes zeros after the last record as the end, in the last segment and in older
 * ones, but anything else there as a torn tail. Large batches append.
 */
static void
test_zero_tail(void)
{
	static uint8_t big[2 * JOURNAL_FILL_BATCH_AVG];
	struct iovec iov = {big, sizeof(big)};
	char dir[128];
	struct seen s;
	struct journal_loc loc;
	struct journal *j;
	off_t size;

	dir_fresh(dir, sizeof(dir), "zero-tail");
	j = jopen(dir, &s, 0);
	fill(j, 0, 20, 4);
	CHECK(append_one(j, 20, &loc) > 0 && write_batch(j) == 0);
	size = file_size(seg_path(dir, 1, ""));
	CHECK(size >= (off_t)JOURNAL_FILL_STEP);
	CHECK(journal_disk_bytes(j) == (uint64_t)size);
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 21, -1) && s.report_count == 0);
	CHECK(file_size(seg_path(dir, 1, "")) == size && journal_disk_bytes(j) == (uint64_t)size);
	/* after a restart the next batch starts a new segment: the old one keeps its zeros */
	fill(j, 21, 10, 3);
	CHECK(journal_current_segment(j) == 2);
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 31, -1) && s.report_count == 0);
	CHECK(dir_count(dir, ".corrupt") == 0);
	CHECK(file_size(seg_path(dir, 1, "")) == size);
	journal_close(j);

	/* one stray byte in the zeros is a torn write: cut at the last record */
	dir_fresh(dir, sizeof(dir), "zero-tail-torn");
	j = jopen(dir, &s, 0);
	fill(j, 0, 20, 4);
	CHECK(append_one(j, 20, &loc) > 0 && write_batch(j) == 0);
	journal_close(j);
	byte_flip(dir, (uint64_t)rec_end(&loc) + 100);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 21, -1) && seen_reported(&s, "torn tail cut: 101 bytes"));
	CHECK(file_size(seg_path(dir, 1, "")) == rec_end(&loc));
	journal_close(j);

	/* batches large on average append: no zeros after them */
	dir_fresh(dir, sizeof(dir), "zero-tail-big");
	j = jopen(dir, &s, 0);
	memset(big, 'b', sizeof(big));
	for (int i = 0; i < 20; i++)
		CHECK(journal_append(j, JOURNAL_REC_MESSAGE, &iov, 1, &loc) > 0 &&
		      write_batch(j) == 0);
	CHECK(file_size(seg_path(dir, 1, "")) == rec_end(&loc));
	journal_close(j);
	seen_reset(&s);
}

/* The crash cut the last record at every possible byte: earlier ones survive. */
static void
test_torn_tail(void)
{
	char src[128], dir[128];
	struct seen s;
	struct journal_loc loc;
	struct journal *j;
	uint8_t *orig;
	size_t len, end;

	dir_fresh(src, sizeof(src), "torn-src");
	j = jopen(src, &s, 0);
	fill(j, 10, 4, 2);
	CHECK(append_one(j, 14, &loc) > 0);
	CHECK(write_batch(j) == 0);
	journal_close(j);
	orig = file_read(seg_path(src, 1, ""), &len);
	end = (size_t)rec_end(&loc);
	CHECK(len > end && zeros_at(orig + end, len - end)); /* written ahead */
	for (size_t cut = loc.offset; cut < end; cut++) {
		dir_fresh(dir, sizeof(dir), "torn");
		mkdir(dir, 0750);
		file_write(seg_path(dir, 1, ""), orig, cut);
		j = jopen(dir, &s, 0);
		CHECK(j != NULL);
		CHECK(seen_records(&s, 10, 4, -1));
		CHECK(file_size(seg_path(dir, 1, "")) == (off_t)loc.offset);
		CHECK(seen_reported(&s, "torn tail cut") == (cut > loc.offset));
		CHECK(!seen_reported(&s, "quarantined"));
		journal_close(j);
		j = jopen(dir, &s, 0);
		CHECK(seen_records(&s, 10, 4, -1));
		CHECK(s.report_count == 0);
		journal_close(j);
	}
	free(orig);
	seen_reset(&s);
}

static void
test_corrupt_middle(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc loc[8];
	struct journal *j;

	/* A payload byte and a length byte: the crc fails, replay resyncs past it. */
	for (int hit = 0; hit < 2; hit++) {
		dir_fresh(dir, sizeof(dir), "corrupt");
		j = jopen(dir, &s, 0);
		for (unsigned i = 0; i < 8; i++)
			CHECK(append_one(j, 20 + i, &loc[i]) > 0);
		CHECK(write_batch(j) == 0);
		journal_close(j);
		byte_flip(dir, hit ? loc[3].offset + 8 : loc[3].offset + 24 + 5);
		j = jopen(dir, &s, 0);
		CHECK(seen_records(&s, 20, 8, 23));
		CHECK(seen_reported(&s, "quarantined"));
		CHECK(file_exists(seg_path(dir, 1, ".corrupt")));
		CHECK(!file_exists(seg_path(dir, 1, "")));
		CHECK(s.count == 7 && s.recs[0].loc.segment == 2);
		journal_close(j);
		j = jopen(dir, &s, 0);
		CHECK(seen_records(&s, 20, 8, 23));
		CHECK(s.report_count == 0);
		journal_close(j);
	}
	seen_reset(&s);
}

/* Corruption in an older segment: the later segments keep their place after it. */
static void
test_corrupt_order(void)
{
	char dir[128];
	struct seen s;
	struct journal *j;

	dir_fresh(dir, sizeof(dir), "order");
	j = jopen(dir, &s, 2048);
	fill(j, 0, 40, 1);
	CHECK(journal_current_segment(j) > 3);
	journal_close(j);
	byte_flip(dir, 32 + 4); /* the type of the first record */
	j = jopen(dir, &s, 2048);
	CHECK(seen_records(&s, 0, 40, 0));
	CHECK(dir_count(dir, ".corrupt") == 1);
	CHECK(dir_count(dir, ".log") == 1);
	fill(j, 40, 3, 1);
	journal_close(j);
	j = jopen(dir, &s, 2048);
	CHECK(seen_records(&s, 0, 43, 0));
	journal_close(j);

	/* A torn tail in a segment that is not the last is corruption too. */
	dir_fresh(dir, sizeof(dir), "order");
	j = jopen(dir, &s, 2048);
	fill(j, 0, 40, 1);
	journal_close(j);
	CHECK(truncate(seg_path(dir, 1, ""), file_size(seg_path(dir, 1, "")) - 3) == 0);
	j = jopen(dir, &s, 2048);
	CHECK(s.count == 39);
	CHECK(seen_reported(&s, "quarantined"));
	journal_close(j);
	seen_reset(&s);
}

static void
test_odd_files(void)
{
	char dir[128];
	struct seen s;
	struct journal *j;
	uint8_t junk[100];

	dir_fresh(dir, sizeof(dir), "odd");
	mkdir(dir, 0750);
	file_write(seg_path(dir, 1, ""), "", 0);
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 17);
	file_write(seg_path(dir, 2, ""), junk, sizeof(junk));
	file_write(seg_path(dir, 3, ".corrupt"), junk, 10);
	j = jopen(dir, &s, 0);
	CHECK(j != NULL);
	CHECK(s.count == 0);
	CHECK(s.report_count == 2);
	CHECK(file_exists(seg_path(dir, 1, ".corrupt")));
	CHECK(file_exists(seg_path(dir, 2, ".corrupt")));
	fill(j, 0, 2, 1);
	CHECK(file_exists(seg_path(dir, 4, ""))); /* above the quarantined names too */
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 2, -1));
	journal_close(j);
	seen_reset(&s);
}

/* A failed batch, and the one queued behind it, never come back. */
static void
test_batch_error(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc loc;
	struct journal_write w;
	struct journal *j;
	int64_t n;

	dir_fresh(dir, sizeof(dir), "error");
	j = jopen(dir, &s, 0);
	CHECK(append_one(j, 0, &loc) == 1);
	CHECK(journal_batch_begin(j, &w) == 0);
	CHECK(pwrite(w.fd, w.buf, w.len, (off_t)w.offset) == (ssize_t)w.len);
	CHECK(append_one(j, 1, &loc) == 2);
	CHECK(journal_batch_end(j, -ENOSPC) == -JOURNAL_ENOSPC);
	CHECK(journal_durable_batch(j) == 0);
	CHECK(!journal_batch_ready(j));
	CHECK(file_size(seg_path(dir, 1, "")) == 32);
	n = append_one(j, 2, &loc);
	CHECK(n == 3);
	CHECK(loc.segment == 2);
	CHECK(write_batch(j) == 0);
	CHECK(append_one(j, 3, &loc) == 4);
	CHECK(journal_batch_begin(j, &w) == 0);
	CHECK(journal_batch_end(j, -EIO) == -JOURNAL_EIO);
	CHECK(journal_durable_batch(j) == 3);
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 2, 1, -1));
	CHECK(s.report_count == 0);
	CHECK(!file_exists(seg_path(dir, 1, ""))); /* header only: nothing to keep */
	journal_close(j);
	seen_reset(&s);
}

static void
test_idempotent_replay(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc first[30];
	struct journal *j;
	bool same = true;

	dir_fresh(dir, sizeof(dir), "twice");
	j = jopen(dir, &s, 0);
	fill(j, 0, 30, 7);
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 30, -1));
	for (unsigned i = 0; i < 30 && i < s.count; i++)
		first[i] = s.recs[i].loc;
	journal_close(j);
	j = jopen(dir, &s, 0);
	CHECK(seen_records(&s, 0, 30, -1));
	for (unsigned i = 0; i < 30 && i < s.count; i++)
		same = same && loc_eq(&first[i], &s.recs[i].loc);
	CHECK(same);
	journal_close(j);
	seen_reset(&s);
}

static void
test_rotation(void)
{
	char dir[128];
	struct seen s;
	struct journal *j;
	uint8_t out[1000], buf[1000];
	uint64_t disk = 0;

	dir_fresh(dir, sizeof(dir), "rotate");
	j = jopen(dir, &s, 4096);
	fill(j, 0, 100, 3);
	CHECK(dir_count(dir, ".log") > 5);
	for (uint64_t seq = 1; seq <= journal_current_segment(j); seq++)
		disk += file_size(seg_path(dir, seq, "")) > 0
		            ? (uint64_t)file_size(seg_path(dir, seq, ""))
		            : 0;
	CHECK(journal_disk_bytes(j) == disk);
	CHECK(journal_segment_delete(j, journal_current_segment(j)) == -EBUSY);
	journal_close(j);
	j = jopen(dir, &s, 4096);
	CHECK(seen_records(&s, 0, 100, -1));
	for (size_t i = 0; i < s.count; i++)
		CHECK(s.recs[i].loc.segment == 1 || s.recs[i].loc.offset > 32 ||
		      s.recs[i - 1].loc.offset + 24 + s.recs[i - 1].loc.length >= 4096);
	CHECK(s.count == 100 && journal_read(j, &s.recs[50].loc, out, sizeof(out)) == 0);
	CHECK(memcmp(out, buf, payload_make(50, buf)) == 0);
	CHECK(journal_segment_delete(j, 1) == 0);
	CHECK(journal_segment_delete(j, 1) == -ENOENT);
	journal_close(j);
	j = jopen(dir, &s, 4096);
	CHECK(s.count > 0 && s.recs[0].loc.segment == 2);
	CHECK(s.count < 100 && rec_is(&s.recs[s.count - 1], 99));
	journal_close(j);
	seen_reset(&s);
}

static void
test_read_corrupt_and_callback_errors(void)
{
	char dir[128];
	struct seen s;
	struct journal_loc loc;
	struct journal *j;
	uint8_t out[1000];
	struct journal_params p = {.replay = seen_replay, .report = seen_report, .arg = &s};
	char err[256];

	dir_fresh(dir, sizeof(dir), "readbad");
	j = jopen(dir, &s, 0);
	CHECK(append_one(j, 3, &loc) > 0);
	CHECK(write_batch(j) == 0);
	byte_flip(dir, loc.offset + 24);
	CHECK(journal_read(j, &loc, out, sizeof(out)) == -EBADMSG);
	loc.length++;
	CHECK(journal_read(j, &loc, out, sizeof(out)) == -EBADMSG);
	journal_close(j);

	dir_fresh(dir, sizeof(dir), "callback");
	j = jopen(dir, &s, 0);
	fill(j, 0, 3, 3);
	journal_close(j);
	p.dir = dir;
	seen_reset(&s);
	s.fail_with = -EINVAL; /* reported, skipped */
	CHECK(journal_open(&p, &j, err, sizeof(err)) == 0);
	CHECK(s.report_count == 3);
	journal_close(j);
	seen_reset(&s);
	s.fail_with = -ENOMEM; /* fails the open */
	CHECK(journal_open(&p, &j, err, sizeof(err)) == -ENOMEM);
	CHECK(strstr(err, "replay failed") != NULL);
	seen_reset(&s);
}

int
main(void)
{
	snprintf(base_dir, sizeof(base_dir), "/tmp/test_journal.XXXXXX");
	if (mkdtemp(base_dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_crc32c();
	test_round_trip();
	test_group_commit();
	test_limits();
	test_torn_tail();
	test_zero_tail();
	test_corrupt_middle();
	test_corrupt_order();
	test_odd_files();
	test_batch_error();
	test_idempotent_replay();
	test_rotation();
	test_read_corrupt_and_callback_errors();
	nftw(base_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
