// The C API of libzmq (Debian: libzmq3-dev). Only the ZMQ module imports this.
#include <zmq.h>
