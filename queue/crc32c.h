/*
 * crc32c.h -- CRC-32C (Castagnoli), the checksum of journal records.
 */
#ifndef RINGMX_QUEUE_CRC32C_H
#define RINGMX_QUEUE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continues crc over buf; start with crc = 0. crc32c("123456789") == 0xE3069283. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* The portable table version crc32c() falls back to without SSE4.2; tests compare the two. */
uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif
