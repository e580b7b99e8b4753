/*
 * The QEMU guest's service: a counter kept in the guest's memory, answered
 * on UDP and TCP. Same wire format as colonet's embedded guest
 * (colonet/guest/counter_store.py): a request is 12 bytes, "INC " or "GET "
 * and a big-endian u64 request id; a reply is 16 bytes, the request id and
 * the counter after the operation, both big-endian u64. TCP carries the same
 * records back to back on one connection.
 *
 * Built static by tools/build_guest.sh and run as the initramfs's last step.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64

static uint64_t counter;

static uint64_t be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

static void put_be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = v & 0xff; v >>= 8; }
}

/* Answers one 12-byte request into reply[16]; 0 if it is not a request. */
static int handle(const unsigned char *req, unsigned char *reply) {
    if (memcmp(req, "INC ", 4) == 0) counter++;
    else if (memcmp(req, "GET ", 4) != 0) return 0;
    put_be64(reply, be64(req + 4));
    put_be64(reply + 8, counter);
    return 1;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7070;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(udp, (struct sockaddr *)&addr, sizeof addr) || bind(tcp, (struct sockaddr *)&addr, sizeof addr) ||
        listen(tcp, 16)) {
        perror("counter_service: bind");
        return 1;
    }
    struct pollfd fds[2 + MAX_CLIENTS];
    unsigned char inbuf[2 + MAX_CLIENTS][12];
    int have[2 + MAX_CLIENTS];
    int n = 2;
    fds[0] = (struct pollfd){.fd = udp, .events = POLLIN};
    fds[1] = (struct pollfd){.fd = tcp, .events = POLLIN};
    printf("counter_service: listening on udp and tcp port %d\n", port);
    fflush(stdout);
    for (;;) {
        if (poll(fds, n, -1) < 0 && errno != EINTR) return 1;
        unsigned char req[64], reply[16];
        if (fds[0].revents & POLLIN) {
            struct sockaddr_in peer;
            socklen_t len = sizeof peer;
            ssize_t got = recvfrom(udp, req, sizeof req, 0, (struct sockaddr *)&peer, &len);
            if (got == 12 && handle(req, reply))
                sendto(udp, reply, sizeof reply, 0, (struct sockaddr *)&peer, len);
        }
        if ((fds[1].revents & POLLIN) && n < 2 + MAX_CLIENTS) {
            int c = accept(tcp, NULL, NULL);
            if (c >= 0) {
                setsockopt(c, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
                fds[n] = (struct pollfd){.fd = c, .events = POLLIN};
                have[n++] = 0;
            }
        }
        for (int i = 2; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            ssize_t got = read(fds[i].fd, inbuf[i] + have[i], 12 - have[i]);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i] = fds[--n];
                memcpy(inbuf[i], inbuf[n], 12);
                have[i] = have[n];
                i--;
                continue;
            }
            have[i] += got;
            if (have[i] == 12) {
                have[i] = 0;
                if (handle(inbuf[i], reply)) write(fds[i].fd, reply, sizeof reply);
            }
        }
    }
}
