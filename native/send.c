/*
 * sendSpans(sockFd, buffers, segments, waitMs) -> Promise<number>
 *
 * Sends a run of replies to a connected stream socket as one libuv work item:
 * segments is a Float64Array of triples [fd, offset, length], where a negative
 * fd -(i + 1) means bytes of buffers[i] (reply headers, bodies read into
 * memory) and any other fd a range of that file, sent with sendfile(2): the page cache's pages go to the socket
 * without passing through this process (for a unix socket the kernel only
 * takes references to them), so a read-only NBD export of a raw image costs
 * the server no copy at all.
 *
 * The socket is non-blocking: when it is full the thread waits in poll(2) for
 * room, but for at most waitMs in all, then resolves with the bytes sent so
 * far (the caller goes on from there later), so a client that stops reading
 * cannot hold a pool thread for long. Resolves the number of bytes sent; a
 * failed send rejects with an errno error (EPIPE, ECONNRESET: the peer left).
 *
 * dupFd(fd) -> number, closeFd(fd), shutdownFd(fd)
 *
 * The sender works on its own duplicate of the socket's descriptor, so that
 * Node.js closing its handle (the peer hung up) never leaves a work item
 * writing to a descriptor number that was since reused; shutdownFd ends a
 * connection for every holder at once (a waiting sendSpans returns at once).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "platter.h"

typedef struct {
  int sock;
  uint32_t nbufs;
  unsigned char **bufs;
  napi_ref *buf_refs;
  uint32_t count;
  int64_t *segs; /* count * 3 */
  int wait_ms;
  int64_t sent;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} send_job;

static int64_t now_ms(void) {
  return monotonic_ns() / 1000000;
}

/* Waits for room in the socket; 0 when the time allowed is used up. */
static int wait_writable(send_job *j, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = j->sock, .events = POLLOUT};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      j->err = errno;
      return 0;
    }
    /* Room, or an error or hang-up that the next send reports. */
    return r > 0;
  }
}

static void send_execute(napi_env env, void *data) {
  send_job *j = data;
  int64_t deadline = now_ms() + j->wait_ms;
  for (uint32_t s = 0; s < j->count; s++) {
    int64_t fd = j->segs[3 * s], at = j->segs[3 * s + 1], len = j->segs[3 * s + 2];
    int more = s + 1 < j->count;
    for (int64_t done = 0; done < len;) {
      ssize_t n;
      if (fd < 0) {
        n = send(j->sock, j->bufs[-fd - 1] + at + done, (size_t)(len - done), MSG_NOSIGNAL | (more ? MSG_MORE : 0));
      } else {
        off_t off = (off_t)(at + done);
        n = sendfile(j->sock, (int)fd, &off, (size_t)(len - done));
        if (n == 0) {
          j->err = EIO; /* the file ends before the range does */
          return;
        }
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          if (!wait_writable(j, deadline)) return;
          continue;
        }
        j->err = errno;
        return;
      }
      done += n;
      j->sent += n;
    }
  }
}

static void free_job(napi_env env, send_job *j) {
  for (uint32_t i = 0; i < j->nbufs; i++)
    if (j->buf_refs[i]) napi_delete_reference(env, j->buf_refs[i]);
  if (j->work) napi_delete_async_work(env, j->work);
  free(j->bufs);
  free(j->buf_refs);
  free(j->segs);
  free(j);
}

static void send_complete(napi_env env, napi_status status, void *data) {
  send_job *j = data;
  if (status != napi_ok && !j->err) j->err = ECANCELED;
  if (j->err)
    napi_reject_deferred(env, j->deferred, make_errno_error(env, j->err, "send"));
  else
    napi_resolve_deferred(env, j->deferred, num(env, (double)j->sent));
  free_job(env, j);
}

/* Takes the buffers (kept alive by references until completion); 0 after throwing. */
static int take_buffers(napi_env env, napi_value list, send_job *j, size_t **lens) {
  uint32_t n;
  bool is_array = false;
  napi_is_array(env, list, &is_array);
  if (!is_array || napi_get_array_length(env, list, &n) != napi_ok) {
    napi_throw_type_error(env, NULL, "platter native: buffers must be an array of Uint8Array");
    return 0;
  }
  j->bufs = calloc(n ? n : 1, sizeof *j->bufs);
  j->buf_refs = calloc(n ? n : 1, sizeof *j->buf_refs);
  *lens = calloc(n ? n : 1, sizeof **lens);
  if (!j->bufs || !j->buf_refs || !*lens) {
    throw_errno(env, ENOMEM, "sendSpans");
    return 0;
  }
  j->nbufs = n;
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    void *data;
    if (napi_get_element(env, list, i, &b) != napi_ok || !get_bytes(env, b, &data, &(*lens)[i])) return 0;
    j->bufs[i] = data;
    if (napi_create_reference(env, b, 1, &j->buf_refs[i]) != napi_ok) {
      napi_throw_error(env, NULL, "platter native: N-API call failed");
      return 0;
    }
  }
  return 1;
}

/* Checks the segments against the buffers and copies them into the job; 0 after throwing. */
static int take_segments(napi_env env, napi_value v, send_job *j, const size_t *lens) {
  uint32_t count;
  const double *d = get_triples(env, v, "segments", &count);
  if (!d) return 0;
  size_t length = (size_t)count * 3;
  for (size_t i = 0; i < length; i += 3) {
    double fd = d[i], at = d[i + 1], len = d[i + 2];
    int ok = at >= 0 && len >= 0 && at <= 9007199254740992.0 && len <= 9007199254740992.0 &&
             fd >= -(double)j->nbufs && fd <= 2147483647.0 && fd == (double)(int64_t)fd;
    if (ok && fd < 0) {
      size_t blen = lens[(size_t)(-fd) - 1];
      ok = at <= (double)blen && len <= (double)blen - at;
    }
    if (!ok) {
      napi_throw_range_error(env, NULL, "platter native: a segment is out of range");
      return 0;
    }
  }
  j->segs = malloc(length ? length * sizeof *j->segs : 1);
  if (!j->segs) {
    throw_errno(env, ENOMEM, "sendSpans");
    return 0;
  }
  for (size_t i = 0; i < length; i++) j->segs[i] = (int64_t)d[i];
  j->count = count;
  return 1;
}

napi_value send_spans(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  int32_t sock, wait_ms;
  if (!get_args(env, info, 4, argv) || !get_fd(env, argv[0], &sock) || !get_int(env, argv[3], &wait_ms)) return NULL;
  if (wait_ms < 0) {
    napi_throw_range_error(env, NULL, "platter native: bad wait");
    return NULL;
  }
  send_job *j = calloc(1, sizeof *j);
  if (!j) return throw_errno(env, ENOMEM, "sendSpans");
  size_t *lens = NULL;
  int ok = take_buffers(env, argv[1], j, &lens) && take_segments(env, argv[2], j, lens);
  free(lens);
  if (!ok) {
    free_job(env, j);
    return NULL;
  }
  j->sock = sock;
  j->wait_ms = wait_ms;
  napi_value promise = queue_async(env, "platter:sendSpans", send_execute, send_complete, j, &j->deferred, &j->work);
  if (!promise) free_job(env, j);
  return promise;
}

enum fd_op { DUP, CLOSE, SHUTDOWN };

static napi_value fd_call(napi_env env, napi_callback_info info, enum fd_op op) {
  napi_value argv[1];
  int32_t fd;
  if (!get_args(env, info, 1, argv) || !get_int(env, argv[0], &fd)) return NULL;
  int r = op == DUP ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : op == CLOSE ? close(fd) : shutdown(fd, SHUT_RDWR);
  /* Shutting down a connection the peer already ended is not an error. */
  if (r < 0 && !(op == SHUTDOWN && errno == ENOTCONN))
    return throw_errno(env, errno, op == DUP ? "dup" : op == CLOSE ? "close" : "shutdown");
  return num(env, op == DUP ? r : 0);
}

napi_value dup_fd(napi_env env, napi_callback_info info) { return fd_call(env, info, DUP); }
napi_value close_fd(napi_env env, napi_callback_info info) { return fd_call(env, info, CLOSE); }
napi_value shutdown_fd(napi_env env, napi_callback_info info) { return fd_call(env, info, SHUTDOWN); }

/*
 * widenSendBuffer(fd, bytes) -> number: for a unix stream socket, asks for a
 * send buffer of `bytes` (the kernel caps it at net.core.wmem_max) and
 * returns what it got; 0 for any other socket (TCP tunes its own, and a fixed
 * SO_SNDBUF would turn that off). sendfile(2) to a unix socket moves page
 * references, up to a send buffer's worth per wake-up of the reader: with the
 * default 208 KiB a 2 GiB read costs the two sides some 10,000 wake-ups each.
 */
napi_value widen_send_buffer(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd, bytes;
  if (!get_args(env, info, 2, argv) || !get_int(env, argv[0], &fd) || !get_int(env, argv[1], &bytes)) return NULL;
  struct sockaddr_storage addr;
  socklen_t len = sizeof addr;
  int type = 0;
  socklen_t tlen = sizeof type;
  if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0 || addr.ss_family != AF_UNIX ||
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM)
    return num(env, 0);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes) < 0) return throw_errno(env, errno, "setsockopt");
  int got = 0;
  socklen_t glen = sizeof got;
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &glen) < 0) return throw_errno(env, errno, "getsockopt");
  return num(env, got);
}
