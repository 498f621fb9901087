// libzmq's C API for the bench tool, plus the few POSIX calls it needs.
#include <zmq.h>
#include <sys/prctl.h>
#include <signal.h>
#include <time.h>

// prctl is variadic, which Swift cannot call: the one use the bench has.
static inline int bench_die_with_parent(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
