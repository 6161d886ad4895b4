//===- check.cpp - a launch's arguments against the manifest --------------===//
//
// Implements check(): sizes, buffer count, and each buffer's name, dtype,
// shape and pointer, against a KernelSpec. Needs no GPU; the C API's
// diffattn_check and diffattn_launch both run it.
//
//===----------------------------------------------------------------------===//

#include "check.h"

#include "error.h"

#include <string>

using namespace diffattn::runtime;

namespace {

std::string shapeText(const int64_t *shape, int rank) {
  std::string text = "[";
  for (int i = 0; i < rank; ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

} // namespace

int diffattn::runtime::check(const KernelSpec &spec,
                             const diffattn_buffer *buffers, int numBuffers,
                             int64_t B, int64_t Sq, int64_t Sk,
                             std::vector<const diffattn_buffer *> &ordered,
                             Sizes &sizes) {
  const std::string where = "kernel '" + spec.name + "': ";
  if (B < 0 || Sq < 0 || Sk < 0)
    return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                where + "sizes must be >= 0, got B = " + std::to_string(B) +
                    ", Sq = " + std::to_string(Sq) +
                    ", Sk = " + std::to_string(Sk));
  // 32-bit grid and index headroom: ceil(Sq / 64) blocks in x, B in z.
  if (B > 65535 || Sq > (int64_t(1) << 31) || Sk > (int64_t(1) << 31))
    return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                where + "sizes out of the supported range (B <= 65535, "
                        "Sq, Sk <= 2^31)");
  sizes = sizesFor(spec, B, Sq, Sk);
  int64_t workspace =
      spec.workspace.empty() ? 0 : evaluate(spec.workspace, sizes);
  size_t expectedBuffers = spec.args.size() + (workspace > 0 ? 1 : 0);
  if (numBuffers != static_cast<int>(expectedBuffers))
    return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                where + "expected " + std::to_string(expectedBuffers) +
                    " buffers" +
                    (workspace > 0 ? " (with a 'workspace' of " +
                                         std::to_string(workspace) + " f32)"
                                   : "") +
                    ", got " + std::to_string(numBuffers));
  ordered.assign(spec.args.size(), nullptr);
  for (size_t i = 0; i < spec.args.size(); ++i) {
    const ArgSpec &arg = spec.args[i];
    const diffattn_buffer *buf = nullptr;
    for (int j = 0; j < numBuffers; ++j)
      if (buffers[j].name && arg.name == buffers[j].name)
        buf = &buffers[j];
    if (!buf)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  where + "missing buffer '" + arg.name + "'");
    if (buf->dtype != arg.dtype)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  where + "'" + arg.name + "' must be " + dtypeName(arg.dtype) +
                      ", got " + dtypeName(buf->dtype));
    bool ok = buf->rank == static_cast<int>(arg.shape.size());
    // Free sizes (a paged cache's pool, packed tokens) are whatever the
    // caller's buffers hold: bound by the first buffer that has them,
    // checked against the others.
    for (size_t d = 0; ok && d < arg.shape.size(); ++d)
      if (int64_t *free = freeSize(sizes, arg.shape[d].symbol))
        if (*free < 0)
          *free = buf->shape[d];
    std::string expected = "[";
    for (size_t d = 0; d < arg.shape.size(); ++d) {
      int64_t size = shapeDimSize(arg.shape[d], sizes);
      expected += (d ? ", " : "") + std::to_string(size);
      if (ok && buf->shape[d] != size)
        ok = false;
    }
    expected += "]";
    if (!ok)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  where + "'" + arg.name + "' must have shape " + expected +
                      " for B = " + std::to_string(B) + ", Sq = " +
                      std::to_string(Sq) + ", Sk = " + std::to_string(Sk) +
                      ", got " + shapeText(buf->shape, buf->rank));
    bool empty = false;
    for (int d = 0; d < buf->rank; ++d)
      empty |= buf->shape[d] == 0;
    if (!buf->data && !empty)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  where + "'" + arg.name + "' has a null data pointer");
    ordered[i] = buf;
  }
  if (workspace > 0) {
    const diffattn_buffer *buf = nullptr;
    for (int j = 0; j < numBuffers; ++j)
      if (buffers[j].name && std::string("workspace") == buffers[j].name)
        buf = &buffers[j];
    if (!buf || buf->dtype != DIFFATTN_F32 || buf->rank != 1 ||
        buf->shape[0] < workspace || !buf->data)
      return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                  where + "needs a 'workspace' buffer of at least " +
                      std::to_string(workspace) + " f32 elements");
    ordered.push_back(buf);
  }
  return DIFFATTN_OK;
}
