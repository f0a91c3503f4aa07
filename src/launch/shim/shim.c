/*
 * rcluster's shim: a small library that `rcluster --adopt-bind` and
 * `rcluster --http-drain` load into each worker (LD_PRELOAD), for servers
 * written without rcluster in mind. Built by build.rs, embedded in the
 * rcluster binary, and handed to each worker as a sealed memfd, so there is
 * nothing to install.
 *
 * It does two things, both at the C library's boundary:
 *
 * Adopt (--adopt-bind). A server's own bind() to the port of one of
 * rcluster's TCP listeners (or to any port, when there is only one) gets
 * that inherited listener instead: the socket the server created becomes a
 * copy of fd 3, and its listen() is a no-op. `app.listen(3000)` then
 * serves rcluster's address, shared by every worker.
 *
 * Drain (both). A server that dies on SIGTERM, or that closes idle
 * keep-alive connections the moment it stops (uvicorn), loses the requests
 * in flight. The shim takes the stop signal first: it makes the listeners
 * vanish from this process (queued connections go to the other workers),
 * marks HTTP/1 responses with `Connection: close` (so each client
 * reconnects elsewhere after its answer; each connection from a moment of
 * its own within a quarter of a second, not all at once), shuts the
 * connections that stay idle past a short grace, and once the last
 * connection is closed, hands the signal to the server with the
 * disposition the server asked for. Every connection it tracks gets
 * TCP_NODELAY, as HTTP servers set it.
 *
 * Count (both). Each response head it sees written on a connection it
 * accepted is counted by status class, and the totals go to the master on
 * NOTIFY_SOCKET (X_RCLUSTER_RESPONSES=1xx,2xx,3xx,4xx,5xx) at most every
 * REPORT_MS while they change; an idle worker's shim sleeps, and so does
 * the master. The master compares a reload's canary's errors with the
 * serving workers'.
 *
 * Everything here runs only in the process rcluster started (LISTEN_PID);
 * in any other process that loads it (the server's children inherit
 * LD_PRELOAD, so that `#!/usr/bin/env node` still gets it) every call
 * passes straight through, as it does after a fork.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_LISTENERS 64
/* Connections and adopted sockets are tracked by fd below this. */
#define MAX_FDS 65536
/* While draining: how long a connection may stay idle before it is shut
 * (a request may be on its way on it), and how often connections are
 * looked at. */
#define GRACE_MS 500
#define CHECK_MS 10
/* While draining, a connection that keeps sending is told to close at a
 * moment of its own within this time, not on its next response: clients
 * that all reconnect at once queue behind each other on the workers left,
 * and those reconnects are the slowest requests of a reload. */
#define CLOSE_SPREAD_MS 250
/* How long a response head that gained a header may wait for room in the
 * socket: it must go out whole. */
#define HEAD_WAIT_MS 1000
#define MAX_IOV 64
/* How often changed response counts go to the master. */
#define REPORT_MS 100

static const char CLOSE_HEADER[] = "Connection: close\r\n";

struct listener {
    int fd;
    dev_t dev;
    ino_t ino;
    int port; /* -1: not TCP */
};

static struct {
    int active; /* the worker itself, not a child or a fork */
    int adopt;
    int stop_signal;
    int count;
    struct listener at[MAX_LISTENERS];
} cfg;

struct conn {
    _Atomic(uint64_t) ino; /* 0: not a connection we accepted */
    atomic_int answered;   /* a response began on it: it may now sit idle */
    atomic_int pending;    /* request bytes read since the last response began */
    atomic_int shut;
    _Atomic(int64_t) active_ms; /* last read or write */
    _Atomic(int64_t) close_ms;  /* draining: when its responses say close (0: not yet set) */
};

static struct conn conns[MAX_FDS];
static atomic_int max_conn_fd = -1;

enum { NOT_ADOPTED, ADOPTED_NONBLOCKING, ADOPTED_BLOCKING };
static _Atomic(unsigned char) adopted[MAX_FDS];

/* Responses seen, by status class (index 1-5; 0: anything else), and
 * whether the drainer thread was woken to report them. */
static _Atomic(uint64_t) responses[6];
static atomic_int report_due;
enum { WAKE_STOP = 1, WAKE_REPORT = 2 };

static atomic_int draining;
static _Atomic(int64_t) drain_started_ms;
static atomic_int handed_over;
static int wake_fds[2] = {-1, -1};

/* The disposition the server asked for its stop signal; ours is installed
 * in its place until the drain hands over. */
static pthread_mutex_t app_action_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction app_action;

/* The C library's own functions, under ours. */
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_listen)(int, int);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_readv)(int, const struct iovec *, int);
static ssize_t (*real_recv)(int, void *, size_t, int);
static ssize_t (*real_recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
static ssize_t (*real_recvmsg)(int, struct msghdr *, int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve(void) {
#define REAL(name) real_##name = dlsym(RTLD_NEXT, #name)
    REAL(bind);
    REAL(listen);
    REAL(accept4);
    REAL(read);
    REAL(readv);
    REAL(recv);
    REAL(recvfrom);
    REAL(recvmsg);
    REAL(write);
    REAL(writev);
    REAL(send);
    REAL(sendto);
    REAL(sendmsg);
    REAL(sigaction);
#undef REAL
}

/* A call may come before our constructor (another library's constructor). */
#define NEED(name) \
    do { \
        if (!real_##name) pthread_once(&resolved, resolve); \
    } while (0)

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char line[512];
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(line, sizeof line, fmt, args);
    va_end(args);
    if (n > 0) {
        NEED(write);
        real_write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    }
}

/* ---- which fds are ours ------------------------------------------------ */

static const struct listener *listener_of(int fd) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) return NULL;
    for (int i = 0; i < cfg.count; i++)
        if (cfg.at[i].dev == st.st_dev && cfg.at[i].ino == st.st_ino) return &cfg.at[i];
    return NULL;
}

static int port_of(const struct sockaddr *addr, socklen_t len) {
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
        return ntohs(((const struct sockaddr_in *)addr)->sin_port);
    if (addr && addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
        return ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
    return -1;
}

/* The listener a bind() to `port` gets: the one on that port, or the only
 * TCP one. Port 0 (any free port) is never adopted. */
static const struct listener *listener_for_port(int port) {
    const struct listener *only = NULL;
    int tcp = 0;
    if (port <= 0) return NULL;
    for (int i = 0; i < cfg.count; i++) {
        if (cfg.at[i].port < 0) continue;
        if (cfg.at[i].port == port) return &cfg.at[i];
        tcp++;
        only = &cfg.at[i];
    }
    return tcp == 1 ? only : NULL;
}

static struct conn *conn_of(int fd) {
    if (fd < 0 || fd >= MAX_FDS || atomic_load(&conns[fd].ino) == 0) return NULL;
    return &conns[fd];
}

/* Whether `fd` still is the connection we accepted (not closed, its number
 * not reused). */
static int still_open(int fd, struct conn *c) {
    struct stat st;
    return fstat(fd, &st) == 0 && (uint64_t)st.st_ino == atomic_load(&c->ino);
}

static void track(int fd) {
    struct stat st;
    if (fd < 0 || fd >= MAX_FDS || fstat(fd, &st) != 0) return;
    struct conn *c = &conns[fd];
    atomic_store(&c->answered, 0);
    atomic_store(&c->pending, 0);
    atomic_store(&c->shut, 0);
    atomic_store(&c->close_ms, 0);
    atomic_store(&c->active_ms, now_ms());
    atomic_store(&c->ino, (uint64_t)st.st_ino);
    int max = atomic_load(&max_conn_fd);
    while (fd > max && !atomic_compare_exchange_weak(&max_conn_fd, &max, fd)) {
    }
}

/* ---- adopt: bind, listen, accept --------------------------------------- */

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    NEED(bind);
    if (!cfg.active || !cfg.adopt || fd < 0 || fd >= MAX_FDS) return real_bind(fd, addr, len);
    int type = 0;
    socklen_t type_len = sizeof type;
    const struct listener *l = listener_for_port(port_of(addr, len));
    if (!l || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM)
        return real_bind(fd, addr, len);
    int status = fcntl(fd, F_GETFL);
    int fd_flags = fcntl(fd, F_GETFD);
    if (status < 0 || fd_flags < 0 || dup3(l->fd, fd, (fd_flags & FD_CLOEXEC) ? O_CLOEXEC : 0) < 0)
        return real_bind(fd, addr, len);
    /* The listener's description is shared by every worker: it stays
     * non-blocking, and accept() waits for a server that asked to block. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    atomic_store(&adopted[fd], (status & O_NONBLOCK) ? ADOPTED_NONBLOCKING : ADOPTED_BLOCKING);
    say("rcluster shim (pid %d): bind to port %d adopted: serving rcluster's listener at fd %d "
        "(port %d)\n",
        (int)getpid(), port_of(addr, len), l->fd, l->port);
    return 0;
}

int listen(int fd, int backlog) {
    NEED(listen);
    if (cfg.active && fd >= 0 && fd < MAX_FDS && atomic_load(&adopted[fd]) != NOT_ADOPTED)
        return 0; /* already listening, with rcluster's backlog */
    return real_listen(fd, backlog);
}

/* Accepts that have taken a connection from a listener and not yet tracked
 * it: the drain waits for them, or it could hand the stop signal over
 * while a connection it never saw is in flight. */
static atomic_int accepting;

/* One accept, and the connection tracked if it came from a listener. The
 * listener is recognised before the call: once the listeners vanish, the
 * fd is a socket that never has a connection, and a connection taken from
 * the listener just before would not be recognised after. A blocking
 * accept is not waited for: it may wait for good. */
static int accept_tracked(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    atomic_fetch_add(&accepting, 1);
    int from_listener = listener_of(fd) != NULL;
    int counted = from_listener && (fcntl(fd, F_GETFL) & O_NONBLOCK);
    if (!counted) atomic_fetch_sub(&accepting, 1);
    int r = real_accept4(fd, addr, len, flags);
    if (r >= 0 && from_listener) {
        /* As Node, Go and hyper do for every HTTP connection: a server that
         * writes head and body apart (uvicorn given --fd takes the socket
         * for a Unix one and skips it) would wait 40 ms on a delayed ACK. */
        int one = 1;
        setsockopt(r, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        track(r);
    }
    if (counted) atomic_fetch_sub(&accepting, 1);
    return r;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    NEED(accept4);
    if (!cfg.active) return real_accept4(fd, addr, len, flags);
    int blocking = fd >= 0 && fd < MAX_FDS && atomic_load(&adopted[fd]) == ADOPTED_BLOCKING;
    int r;
    for (;;) {
        r = accept_tracked(fd, addr, len, flags);
        if (r >= 0 || !blocking || (errno != EAGAIN && errno != EWOULDBLOCK)) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, -1) < 0 && errno != EINTR) return -1;
    }
    return r;
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) { return accept4(fd, addr, len, 0); }

/* ---- reads: a request is pending --------------------------------------- */

static ssize_t after_read(int fd, ssize_t r) {
    struct conn *c;
    if (r > 0 && cfg.active && (c = conn_of(fd))) {
        atomic_store(&c->pending, 1);
        atomic_store(&c->active_ms, now_ms());
    }
    return r;
}

ssize_t read(int fd, void *buf, size_t n) {
    NEED(read);
    return after_read(fd, real_read(fd, buf, n));
}

ssize_t readv(int fd, const struct iovec *iov, int count) {
    NEED(readv);
    return after_read(fd, real_readv(fd, iov, count));
}

ssize_t recv(int fd, void *buf, size_t n, int flags) {
    NEED(recv);
    return after_read(fd, real_recv(fd, buf, n, flags));
}

ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len) {
    NEED(recvfrom);
    return after_read(fd, real_recvfrom(fd, buf, n, flags, addr, len));
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    NEED(recvmsg);
    return after_read(fd, real_recvmsg(fd, msg, flags));
}

/* ---- writes: a response begins; while draining, it says close ---------- */

/* How a response head must change to say `Connection: close`. */
struct edit {
    size_t at;      /* where: the value to overwrite, or where to insert */
    size_t len;     /* >0: overwrite `len` bytes of "keep-alive" in place */
    int insert;     /* insert CLOSE_HEADER at `at` */
};

/* Whether `p` (n bytes) begins an HTTP/1 response head that a client would
 * take as reusable, and the edit that makes it say close. 1xx and 101
 * (upgrades) are left alone, as is an explicit `Connection` other than
 * keep-alive. */
static int plan_edit(const char *p, size_t n, struct edit *e) {
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[9] == '1') return 0;
    const char *eol = memmem(p, n, "\r\n", 2);
    if (!eol) return 0;
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    const char *limit = end ? end + 2 : p + n;
    for (const char *line = eol + 2; line < limit;) {
        const char *next = memmem(line, (size_t)(limit - line), "\r\n", 2);
        if (!next) break;
        size_t line_len = (size_t)(next - line);
        if (line_len > 11 && strncasecmp(line, "connection:", 11) == 0) {
            const char *v = line + 11;
            while (v < next && (*v == ' ' || *v == '\t')) v++;
            const char *v_end = next;
            while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t')) v_end--;
            if ((size_t)(v_end - v) == 10 && strncasecmp(v, "keep-alive", 10) == 0) {
                e->at = (size_t)(v - p);
                e->len = 10;
                e->insert = 0;
                return 1;
            }
            return 0; /* close already, or an upgrade */
        }
        line = next + 2;
    }
    e->at = (size_t)(eol + 2 - p);
    e->len = 0;
    e->insert = 1;
    return 1;
}

/* Writes all of `iov` (bounded by HEAD_WAIT_MS), whatever the socket's
 * mode: a head we added to must not go out in part. */
static ssize_t write_all(int fd, struct iovec *iov, int count, int flags) {
    ssize_t total = 0;
    int64_t deadline = now_ms() + HEAD_WAIT_MS;
    while (count > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
        ssize_t r = real_sendmsg(fd, &msg, flags | MSG_NOSIGNAL);
        if (r < 0 && errno == ENOTSOCK) r = real_writev(fd, iov, count);
        if (r < 0) {
            if (errno == EINTR) continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && now_ms() < deadline) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                poll(&p, 1, (int)(deadline - now_ms()));
                continue;
            }
            return total > 0 ? -2 : -1;
        }
        total += r;
        while (count > 0 && (size_t)r >= iov->iov_len) {
            r -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + r;
            iov->iov_len -= (size_t)r;
        }
    }
    return total;
}

/* Whether a response on `c` says close: from a moment of the connection's
 * own after the stop, chosen at its first response of the drain (so one
 * already under way when the stop came says close). Successive connections
 * step through the spread by the golden ratio, so any few of them are far
 * apart. */
static int time_to_close(struct conn *c) {
    static atomic_uint calls;
    int64_t now = now_ms();
    int64_t at = atomic_load(&c->close_ms);
    if (at == 0) {
        double share = (double)atomic_fetch_add(&calls, 1) * 0.61803398875;
        at = atomic_load(&drain_started_ms) +
             (int64_t)((share - (double)(uint64_t)share) * CLOSE_SPREAD_MS);
        int64_t unset = 0;
        if (!atomic_compare_exchange_strong(&c->close_ms, &unset, at)) at = unset;
    }
    return now >= at;
}

/* The write of `iov` (the server's), as the drain wants it. Returns what
 * the server's call returns, or -1 with errno. `*done` is 0 when the call
 * should go to the C library unchanged. */
static ssize_t drain_write(int fd, const struct iovec *iov, int count, int flags, int *done) {
    struct conn *c = conn_of(fd);
    *done = 0;
    if (!c || count < 1 || iov[0].iov_len < 12) return 0;
    const char *head = iov[0].iov_base;
    if (memcmp(head, "HTTP/1.", 7) != 0) return 0;
    atomic_fetch_add(&responses[head[9] >= '1' && head[9] <= '5' ? head[9] - '0' : 0], 1);
    if (!atomic_exchange(&report_due, 1)) {
        char byte = WAKE_REPORT;
        real_write(wake_fds[1], &byte, 1);
    }
    atomic_store(&c->answered, 1);
    atomic_store(&c->pending, 0);
    atomic_store(&c->active_ms, now_ms());
    struct edit e;
    if (!atomic_load(&draining) || count > MAX_IOV || !plan_edit(head, iov[0].iov_len, &e) ||
        !time_to_close(c) || !still_open(fd, c))
        return 0;
    *done = 1;
    size_t head_len = iov[0].iov_len;
    char *copy = malloc(head_len);
    if (!copy) {
        *done = 0;
        return 0;
    }
    memcpy(copy, head, head_len);
    struct iovec out[MAX_IOV + 2];
    ssize_t r;
    if (!e.insert) {
        /* "keep-alive" -> "close     ": the same length, so the server's
         * byte counts hold whatever the kernel takes. */
        memcpy(copy + e.at, "close     ", e.len);
        out[0] = (struct iovec){copy, head_len};
        memcpy(out + 1, iov + 1, sizeof *iov * (size_t)(count - 1));
        struct msghdr msg = {.msg_iov = out, .msg_iovlen = (size_t)count};
        r = real_sendmsg(fd, &msg, flags);
        if (r < 0 && errno == ENOTSOCK) r = real_writev(fd, out, count);
        free(copy);
        return r;
    }
    /* A header inserted after the status line: the head goes out whole,
     * then as much of the rest as the socket takes now; the server is told
     * only of its own bytes. */
    out[0] = (struct iovec){copy, e.at};
    out[1] = (struct iovec){(void *)CLOSE_HEADER, sizeof CLOSE_HEADER - 1};
    out[2] = (struct iovec){copy + e.at, head_len - e.at};
    r = write_all(fd, out, 3, flags);
    free(copy);
    if (r < 0) {
        if (r == -2) shutdown(fd, SHUT_RDWR); /* half a head: the stream is lost */
        return -1;
    }
    if (count == 1) return (ssize_t)head_len;
    struct msghdr msg = {.msg_iov = (struct iovec *)iov + 1, .msg_iovlen = (size_t)count - 1};
    r = real_sendmsg(fd, &msg, flags | MSG_DONTWAIT);
    if (r < 0 && errno == ENOTSOCK) r = real_writev(fd, iov + 1, count - 1);
    return (ssize_t)head_len + (r > 0 ? r : 0);
}

/* drain_write for one buffer. Once active, every real function is
 * resolved (the constructor did it), so only each wrapper's own is needed
 * before. */
static ssize_t drain_buffer(int fd, const void *buf, size_t n, int flags, int *done) {
    struct iovec one = {(void *)buf, n};
    *done = 0;
    return cfg.active ? drain_write(fd, &one, 1, flags, done) : 0;
}

ssize_t write(int fd, const void *buf, size_t n) {
    NEED(write);
    int done;
    ssize_t r = drain_buffer(fd, buf, n, 0, &done);
    return done ? r : real_write(fd, buf, n);
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    NEED(writev);
    int done = 0;
    ssize_t r = cfg.active ? drain_write(fd, iov, count, 0, &done) : 0;
    return done ? r : real_writev(fd, iov, count);
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
    NEED(send);
    int done;
    ssize_t r = drain_buffer(fd, buf, n, flags, &done);
    return done ? r : real_send(fd, buf, n, flags);
}

ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *addr,
               socklen_t len) {
    NEED(sendto);
    int done = 0;
    ssize_t r = addr ? 0 : drain_buffer(fd, buf, n, flags, &done);
    return done ? r : real_sendto(fd, buf, n, flags, addr, len);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    NEED(sendmsg);
    int done = 0;
    ssize_t r = 0;
    if (cfg.active && !msg->msg_name && !msg->msg_controllen && msg->msg_iovlen <= MAX_IOV)
        r = drain_write(fd, msg->msg_iov, (int)msg->msg_iovlen, flags, &done);
    return done ? r : real_sendmsg(fd, msg, flags);
}

/* ---- the stop signal --------------------------------------------------- */

static void on_stop(int sig) {
    (void)sig;
    int saved = errno;
    char byte = WAKE_STOP;
    /* clock_gettime is async-signal-safe. */
    if (!atomic_load(&draining)) atomic_store(&drain_started_ms, now_ms());
    if (!atomic_exchange(&draining, 1)) real_write(wake_fds[1], &byte, 1);
    errno = saved;
}

/* The server's calls for the stop signal are remembered, not applied,
 * until the drain hands the signal over. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    NEED(sigaction);
    if (!cfg.active || sig != cfg.stop_signal || atomic_load(&handed_over))
        return real_sigaction(sig, act, old);
    pthread_mutex_lock(&app_action_lock);
    if (old) *old = app_action;
    if (act) app_action = *act;
    pthread_mutex_unlock(&app_action_lock);
    return 0;
}

/* glibc's signal() does not go through sigaction's symbol. */
sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act = {.sa_handler = handler, .sa_flags = SA_RESTART}, old;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

/* ---- the drain ---------------------------------------------------------- */

/* A socket that never has a connection to accept: a listening Unix socket
 * at an address nobody is told. */
static int never_ready(int nonblocking) {
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    sa_family_t family = AF_UNIX;
    if (s < 0) return -1;
    if (real_bind(s, (struct sockaddr *)&family, sizeof family) != 0 || real_listen(s, 1) != 0) {
        close(s);
        return -1;
    }
    return s;
}

struct watch {
    int epoll, fd;
    struct epoll_event event;
};

/* The listeners vanish from this process: every fd of one becomes a socket
 * that never has a connection. An epoll set keeps watching a listener's
 * file while any process holds it (the master and the other workers do),
 * so each registration is moved to the new socket first. */
static void vanish(void) {
    int fds[256], nfds = 0;
    struct watch watches[256];
    int nwatches = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return;
    int epolls[64], nepolls = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        int fd = atoi(entry->d_name);
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9' || fd == dirfd(dir)) continue;
        char path[64], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (strcmp(target, "anon_inode:[eventpoll]") == 0 && nepolls < 64) epolls[nepolls++] = fd;
        }
        if (listener_of(fd) && nfds < 256) fds[nfds++] = fd;
    }
    closedir(dir);
    for (int i = 0; i < nepolls; i++) {
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epolls[i]);
        FILE *info = fopen(path, "re");
        if (!info) continue;
        while (fgets(line, sizeof line, info)) {
            int fd;
            unsigned events;
            unsigned long long data;
            if (sscanf(line, "tfd: %d events: %x data: %llx", &fd, &events, &data) != 3) continue;
            for (int j = 0; j < nfds && nwatches < 256; j++) {
                if (fds[j] != fd) continue;
                struct watch *w = &watches[nwatches++];
                w->epoll = epolls[i];
                w->fd = fd;
                w->event.events = events;
                w->event.data.u64 = data;
            }
        }
        fclose(info);
    }
    for (int i = 0; i < nwatches; i++) epoll_ctl(watches[i].epoll, EPOLL_CTL_DEL, watches[i].fd, NULL);
    for (int i = 0; i < nfds; i++) {
        int fd = fds[i];
        /* An adopted fd is non-blocking underneath whatever the server
         * asked (accept4 waits for it), and so must its stand-in be: an
         * accept already past its check of the listener, counted in
         * `accepting`, may reach the stand-in, and must return there, not
         * block for good with the drain waiting on it. */
        int kind = fd < MAX_FDS ? atomic_load(&adopted[fd]) : NOT_ADOPTED;
        int nonblocking = kind != NOT_ADOPTED || (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
        int cloexec = (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? O_CLOEXEC : 0;
        int s = never_ready(nonblocking);
        if (s < 0) continue;
        dup3(s, fd, cloexec);
        close(s);
    }
    for (int i = 0; i < nwatches; i++) epoll_ctl(watches[i].epoll, EPOLL_CTL_ADD, watches[i].fd, &watches[i].event);
}

/* Connections still open; those idle past the grace are shut. */
static int sweep(int64_t started) {
    /* Read before the connections: an accept that ends after this read
     * either tracked its connection already, or ran on a vanished
     * listener and found none. */
    int open = atomic_load(&accepting);
    int64_t now = now_ms();
    int max = atomic_load(&max_conn_fd);
    for (int fd = 0; fd <= max; fd++) {
        struct conn *c = conn_of(fd);
        if (!c) continue;
        if (!still_open(fd, c)) {
            atomic_store(&c->ino, 0);
            continue;
        }
        open++;
        /* Idle: between two requests of a keep-alive connection. One that
         * was never answered has a request coming (a server slow to read
         * it under load is not a client gone quiet). */
        if (now - started >= GRACE_MS && atomic_load(&c->answered) && !atomic_load(&c->pending) &&
            now - atomic_load(&c->active_ms) >= GRACE_MS && !atomic_exchange(&c->shut, 1)) {
            /* Looked at again just before: a number the server reused in
             * between would be someone else's socket. And a request that
             * arrived but that a busy server has not read yet is not
             * idleness. */
            char byte;
            int unread = (int)real_recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
            if (unread)
                atomic_store(&c->shut, 0);
            else if (still_open(fd, c))
                shutdown(fd, SHUT_RDWR);
        }
    }
    return open;
}

/* The master's NOTIFY_SOCKET, read at start (a server may unset it). */
static struct sockaddr_un notify_addr;
static socklen_t notify_len;

static void read_notify_socket(void) {
    const char *name = getenv("NOTIFY_SOCKET");
    size_t n = name ? strlen(name) : 0;
    if (n < 2 || n >= sizeof notify_addr.sun_path || (name[0] != '/' && name[0] != '@')) return;
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, name, n);
    /* '@': the abstract namespace, whose name is not NUL-terminated. */
    if (name[0] == '@') notify_addr.sun_path[0] = '\0';
    notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (name[0] == '/'));
}

/* Tells the master that no connection is left: the server's death by the
 * stop signal handed over next (its default action, for many) lost
 * nothing, and the master's log need not say it probably did. */
static void say_drained(void) {
    static const char msg[] = "X_RCLUSTER_DRAINED=1";
    if (notify_len == 0) return;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    real_sendto(fd, msg, sizeof msg - 1, MSG_NOSIGNAL, (struct sockaddr *)&notify_addr, notify_len);
    close(fd);
}

/* The response counts, if they changed since the last report. */
static void report_responses(void) {
    static uint64_t last[6];
    uint64_t now[6];
    int changed = 0;
    for (int i = 1; i <= 5; i++) {
        now[i] = atomic_load(&responses[i]);
        changed |= now[i] != last[i];
    }
    if (!changed || notify_len == 0) return;
    char msg[160];
    int n = snprintf(msg, sizeof msg, "X_RCLUSTER_RESPONSES=%llu,%llu,%llu,%llu,%llu",
                     (unsigned long long)now[1], (unsigned long long)now[2],
                     (unsigned long long)now[3], (unsigned long long)now[4],
                     (unsigned long long)now[5]);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    if (real_sendto(fd, msg, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&notify_addr,
                    notify_len) == n)
        memcpy(last, now, sizeof last);
    close(fd);
}

static void *drainer(void *unused) {
    (void)unused;
    char byte;
    /* Until the stop signal: a response counted since the last report
     * wakes this thread, which reports after REPORT_MS (the responses of
     * that time in one message). */
    for (int stop = 0; !stop;) {
        if (real_read(wake_fds[0], &byte, 1) != 1) {
            if (errno == EINTR) continue;
            break;
        }
        stop = byte == WAKE_STOP;
        /* The wait before a report ends early for the stop signal: a
         * failed canary must stop accepting at once. */
        int64_t until = now_ms() + REPORT_MS, left;
        while (!stop && (left = until - now_ms()) > 0) {
            struct pollfd wake = {.fd = wake_fds[0], .events = POLLIN};
            if (poll(&wake, 1, (int)left) > 0 && real_read(wake_fds[0], &byte, 1) == 1)
                stop = byte == WAKE_STOP;
        }
        atomic_store(&report_due, 0);
        report_responses();
    }
    int64_t started = now_ms();
    vanish();
    while (sweep(started) > 0) {
        struct timespec pause = {0, CHECK_MS * 1000000L};
        nanosleep(&pause, NULL);
    }
    report_responses();
    say_drained();
    /* Hand over: the server's own disposition, then the signal. */
    pthread_mutex_lock(&app_action_lock);
    atomic_store(&handed_over, 1);
    real_sigaction(cfg.stop_signal, &app_action, NULL);
    pthread_mutex_unlock(&app_action_lock);
    kill(getpid(), cfg.stop_signal);
    return NULL;
}

/* A fork of the worker is not the worker: it gets the server's own
 * disposition and nothing of ours. */
static void after_fork_in_child(void) {
    if (!cfg.active) return;
    cfg.active = 0;
    real_sigaction(cfg.stop_signal, &app_action, NULL);
}

/* ---- start-up ------------------------------------------------------------ */

static int read_listeners(void) {
    const char *count = getenv("LISTEN_FDS");
    int n = count ? atoi(count) : 0;
    if (n <= 0 || n > MAX_LISTENERS) return 0;
    for (int i = 0; i < n; i++) {
        struct listener *l = &cfg.at[cfg.count];
        struct stat st;
        struct sockaddr_storage addr;
        socklen_t len = sizeof addr;
        l->fd = 3 + i;
        if (fstat(l->fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        l->port = getsockname(l->fd, (struct sockaddr *)&addr, &len) == 0
                      ? port_of((struct sockaddr *)&addr, len)
                      : -1;
        cfg.count++;
    }
    return cfg.count;
}

__attribute__((constructor)) static void start(void) {
    pthread_once(&resolved, resolve);
    const char *spec = getenv("RCLUSTER_SHIM");
    const char *listen_pid = getenv("LISTEN_PID");
    if (!spec || !listen_pid || atol(listen_pid) != (long)getpid()) return;
    cfg.adopt = strstr(spec, "adopt") != NULL;
    const char *stop = strstr(spec, "stop=");
    cfg.stop_signal = stop ? atoi(stop + 5) : SIGTERM;
    if (cfg.stop_signal <= 0 || cfg.stop_signal >= NSIG || !read_listeners()) return;
    if (pipe2(wake_fds, O_CLOEXEC) != 0) return;
    read_notify_socket();
    struct sigaction ours = {.sa_handler = on_stop, .sa_flags = SA_RESTART};
    sigemptyset(&ours.sa_mask);
    if (real_sigaction(cfg.stop_signal, &ours, &app_action) != 0) return;
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    sigset_t all, old;
    sigfillset(&all);
    /* The drainer takes no signal: the server's handlers run elsewhere. */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int started = pthread_create(&thread, &attr, drainer, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (started != 0) {
        real_sigaction(cfg.stop_signal, &app_action, NULL);
        return;
    }
    pthread_atfork(NULL, NULL, after_fork_in_child);
    cfg.active = 1;
}
