/* Why: the benchmark's SYN source. A Python or hping3 sender would be the bottleneck, so this sends
 * prebuilt IPv4 SYNs through an AF_PACKET socket (qdisc bypass, sendmmsg batches), either as fast as it
 * can or paced to a given rate, and prints what it really sent as one JSON line.
 * Modes: junk (random ISN, source port and source address in 198.18.0.0/15: never a token), valid
 * (records from a token file, each sent once, in order), mix (one valid record every N packets, junk in
 * between). Valid records: 10 bytes each, little-endian u32 saddr (network order bytes), u16 sport,
 * u32 isn (host order). Checksums are computed here, so every SYN is well formed.
 *
 * synflood IFACE DSTMAC SRCMAC DSTIP DPORT MODE RATE SECONDS [TOKENFILE OFFSET MIXEVERY]
 *   RATE 0 = as fast as possible. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME 74 /* 14 ethernet + 20 IPv4 + 40 TCP (MSS, SACK-OK, timestamps, NOP, window scale) */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static inline uint64_t next_rand(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}

static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const uint8_t *p, int len) {
    for (int i = 0; i + 1 < len; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (len & 1) sum += (uint32_t)(p[len - 1] << 8);
    return sum;
}

static int parse_mac(const char *s, uint8_t *mac) {
    return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &mac[0], &mac[1], &mac[2], &mac[3], &mac[4],
                  &mac[5]) == 6 ? 0 : -1;
}

static void fill(uint8_t *f, uint32_t saddr_be, uint16_t sport, uint32_t isn, uint16_t ipid) {
    uint8_t *ip = f + 14, *tcp = f + 34;
    memcpy(ip + 12, &saddr_be, 4);
    ip[4] = ipid >> 8; ip[5] = ipid & 0xff;
    ip[10] = ip[11] = 0;
    uint16_t c = csum_fold(csum_add(0, ip, 20));
    ip[10] = c >> 8; ip[11] = c & 0xff;
    tcp[0] = sport >> 8; tcp[1] = sport & 0xff;
    tcp[4] = isn >> 24; tcp[5] = isn >> 16; tcp[6] = isn >> 8; tcp[7] = isn;
    uint32_t ts = (uint32_t)next_rand();
    memcpy(tcp + 28, &ts, 4);
    tcp[16] = tcp[17] = 0;
    uint32_t sum = csum_add(0, ip + 12, 8) + 6 + 40; /* pseudo header */
    sum = csum_add(sum, tcp, 40);
    c = csum_fold(sum);
    tcp[16] = c >> 8; tcp[17] = c & 0xff;
}

int main(int argc, char **argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: synflood IFACE DSTMAC SRCMAC DSTIP DPORT MODE RATE SECONDS "
                        "[TOKENFILE OFFSET MIXEVERY]\n");
        return 2;
    }
    const char *iface = argv[1], *mode = argv[6];
    uint8_t dmac[6], smac[6];
    if (parse_mac(argv[2], dmac) || parse_mac(argv[3], smac)) { fprintf(stderr, "bad mac\n"); return 2; }
    struct in_addr dst;
    if (inet_pton(AF_INET, argv[4], &dst) != 1) { fprintf(stderr, "bad dst\n"); return 2; }
    int dport = atoi(argv[5]);
    double rate = atof(argv[7]), seconds = atof(argv[8]);
    int junk = !strcmp(mode, "junk"), valid = !strcmp(mode, "valid"), mix = !strcmp(mode, "mix");
    if (!junk && !valid && !mix) { fprintf(stderr, "bad mode\n"); return 2; }
    const uint8_t *tokens = NULL; long ntok = 0, tok = 0; long mix_every = 1;
    if (valid || mix) {
        if (argc < 11) { fprintf(stderr, "token file and offset needed\n"); return 2; }
        int fd = open(argv[9], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) { perror("token file"); return 1; }
        ntok = st.st_size / 10;
        tokens = mmap(NULL, st.st_size ? st.st_size : 1, PROT_READ, MAP_PRIVATE, fd, 0);
        if (tokens == MAP_FAILED) { perror("mmap"); return 1; }
        tok = atol(argv[10]);
        if (mix) mix_every = argc > 11 ? atol(argv[11]) : 100;
    }
    rng ^= (uint64_t)getpid() << 32 ^ (uint64_t)(now() * 1e9);

    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(iface);
    sll.sll_protocol = htons(ETH_P_IP);
    sll.sll_halen = 6;
    memcpy(sll.sll_addr, dmac, 6);
    if (!sll.sll_ifindex) { perror("iface"); return 1; }
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }

    static uint8_t frames[BATCH][FRAME];
    static const uint8_t opts[20] = {2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7};
    for (int i = 0; i < BATCH; i++) {
        uint8_t *f = frames[i], *ip = f + 14, *tcp = f + 34;
        memcpy(f, dmac, 6); memcpy(f + 6, smac, 6); f[12] = 0x08; f[13] = 0x00;
        ip[0] = 0x45; ip[2] = 0; ip[3] = 60; ip[6] = 0x40; ip[8] = 64; ip[9] = 6;
        memcpy(ip + 16, &dst, 4);
        tcp[2] = dport >> 8; tcp[3] = dport & 0xff;
        tcp[12] = 10 << 4; tcp[13] = 0x02; tcp[14] = 0xfa; tcp[15] = 0xf0;
        memcpy(tcp + 20, opts, 20);
    }
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = frames[i]; iov[i].iov_len = FRAME;
        msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
    }

    long sent = 0, errors = 0, valid_sent = 0, counter = 0;
    uint16_t ipid = (uint16_t)next_rand();
    int exhausted = 0;
    double start = now(), end = start + seconds, t = start;
    while (t < end && !exhausted) {
        int n = 0;
        for (; n < BATCH; n++) {
            int use_token = valid || (mix && counter % mix_every == 0);
            counter++;
            if (use_token) {
                if (tok >= ntok) { exhausted = 1; break; }
                const uint8_t *r = tokens + tok * 10;
                uint32_t saddr; uint16_t sport; uint32_t isn;
                memcpy(&saddr, r, 4); memcpy(&sport, r + 4, 2); memcpy(&isn, r + 6, 4);
                fill(frames[n], saddr, sport, isn, ipid++);
                tok++; valid_sent++;
            } else {
                uint64_t r = next_rand();
                uint32_t saddr = htonl(0xC6120000u | (uint32_t)(r & 0x1ffff)); /* 198.18.0.0/15 */
                uint16_t sport = (uint16_t)(1024 + (r >> 17) % 64512);
                uint32_t isn = (uint32_t)(r >> 32);
                fill(frames[n], saddr, sport, isn, ipid++);
            }
        }
        if (n == 0) break;
        int off = 0;
        while (off < n) {
            int r = sendmmsg(s, msgs + off, n - off, 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                errors++;
                if (errno == ENOBUFS || errno == EAGAIN) { usleep(50); continue; }
                perror("sendmmsg");
                return 1;
            }
            off += r;
        }
        sent += n;
        t = now();
        if (rate > 0) {
            double due = start + sent / rate;
            if (due > end) due = end;
            while (t < due) {
                if (due - t > 0.0005) usleep((useconds_t)((due - t) * 1e6 * 0.8));
                t = now();
            }
        }
    }
    double elapsed = now() - start;
    printf("{\"sent\": %ld, \"valid_sent\": %ld, \"next_offset\": %ld, \"seconds\": %.4f, "
           "\"rate_pps\": %.1f, \"send_errors\": %ld, \"tokens_exhausted\": %s}\n",
           sent, valid_sent, tok, elapsed, sent / elapsed, errors, exhausted ? "true" : "false");
    return 0;
}
