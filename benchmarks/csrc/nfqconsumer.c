/* Why: the machine's ceiling for a userspace NFQUEUE consumer, measured in the same run as stealth's
 * server. It binds a queue with libnetfilter_queue, parses each SYN (dport, ISN, source port), looks it
 * up in a small open-addressing hash set (empty of live tokens, so every packet is junk) and drops it:
 * per packet (one verdict message each) or batched (drain the socket, one NFQNL_MSG_VERDICT_BATCH).
 *
 * nfqconsumer QUEUE per-packet|batch    runs until SIGTERM/SIGINT; prints one JSON line. */
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define SET_SIZE 65536
static uint64_t set[SET_SIZE];
static volatile sig_atomic_t stop;
static long packets, hits;
static uint32_t last_id;
static int have_last, batch;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int lookup(uint64_t key) {
    uint64_t h = key * 0x9e3779b97f4a7c15ULL;
    for (uint32_t i = (uint32_t)(h >> 48);; i = (i + 1) & (SET_SIZE - 1)) {
        if (set[i] == 0) return 0;
        if (set[i] == key) return 1;
    }
}

static int cb(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data) {
    (void)msg; (void)data;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (!ph) return 0;
    uint32_t id = ntohl(ph->packet_id);
    unsigned char *p;
    int len = nfq_get_payload(nfa, &p);
    int hit = 0;
    if (len >= 40 && (p[0] >> 4) == 4) {
        int ihl = (p[0] & 15) * 4;
        if (len >= ihl + 20) {
            const unsigned char *t = p + ihl;
            uint64_t sport = (uint64_t)(t[0] << 8 | t[1]), dport = (uint64_t)(t[2] << 8 | t[3]);
            uint64_t isn = (uint64_t)t[4] << 24 | t[5] << 16 | t[6] << 8 | t[7];
            hit = lookup(dport << 48 | isn << 16 | sport);
        }
    }
    packets++;
    if (hit) {
        hits++;
        return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
    }
    if (batch) { last_id = id; have_last = 1; return 0; }
    return nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: nfqconsumer QUEUE per-packet|batch\n"); return 2; }
    int qnum = atoi(argv[1]);
    batch = !strcmp(argv[2], "batch");
    struct nfq_handle *h = nfq_open();
    if (!h) { perror("nfq_open"); return 1; }
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)qnum, &cb, NULL);
    if (!qh) { perror("nfq_create_queue"); return 1; }
    if (nfq_set_mode(qh, NFQNL_COPY_PACKET, 128) < 0) { perror("nfq_set_mode"); return 1; }
    nfq_set_queue_maxlen(qh, 4096);
    nfnl_rcvbufsiz(nfq_nfnlh(h), 4096 * 832);
    int fd = nfq_fd(h);
    int one = 1;
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    static char buf[65536] __attribute__((aligned));
    while (!stop) {
        int rv = (int)recv(fd, buf, sizeof buf, 0);
        if (rv < 0) { if (errno == EINTR || errno == ENOBUFS) continue; perror("recv"); break; }
        nfq_handle_packet(h, buf, rv);
        if (batch) {
            for (int i = 0; i < 256; i++) {
                rv = (int)recv(fd, buf, sizeof buf, MSG_DONTWAIT);
                if (rv <= 0) break;
                nfq_handle_packet(h, buf, rv);
            }
            if (have_last) { nfq_set_verdict_batch(qh, last_id, NF_DROP); have_last = 0; }
        }
    }
    nfq_destroy_queue(qh);
    nfq_close(h);
    printf("{\"packets\": %ld, \"hits\": %ld}\n", packets, hits);
    return 0;
}
