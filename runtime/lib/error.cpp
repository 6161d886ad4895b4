//===- error.cpp - the runtime's failure messages -------------------------===//
//
// The per-thread message behind diffattn_last_error: runtime.h promises the
// message of the calling thread's last failure, so it is thread_local.
//
//===----------------------------------------------------------------------===//

#include "error.h"

namespace {
thread_local std::string lastErrorMessage;
} // namespace

int diffattn::runtime::fail(int code, const std::string &message) {
  lastErrorMessage = message;
  return code;
}

const char *diffattn::runtime::lastError() { return lastErrorMessage.c_str(); }
