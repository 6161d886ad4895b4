//===- error.h - the runtime's failure messages -----------------*- C++ -*-===//
//
// Every failure of the runtime records one message for the calling thread,
// which the C API's diffattn_last_error returns. The runtime's internals
// report a failure by returning fail(code, message).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_ERROR_H
#define DIFFATTN_RUNTIME_LIB_ERROR_H

#include <string>

namespace diffattn::runtime {

/// Records `message` as the calling thread's last failure and returns
/// `code` (a DIFFATTN_ERROR_* status of runtime.h).
int fail(int code, const std::string &message);

/// The calling thread's last failure message ("" if none yet).
const char *lastError();

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_ERROR_H
