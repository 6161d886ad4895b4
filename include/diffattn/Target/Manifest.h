//===- Manifest.h - the manifest written by diffattn-compile ----*- C++ -*-===//
//
// The one writer of DIR/manifest.json, the contract between the compiler
// and the runtime (docs/manifest.md is its schema; the runtime's
// runtime/lib/manifest.cpp is its one reader). A kernel's entry starts from
// the `diffattn.kernel` description that diffattn-outline-kernels and the
// strategies attach to the kernel function, plus what the target adds (the
// artifact files, ptxas' resource report, the replayable pipeline).
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_TARGET_MANIFEST_H
#define DIFFATTN_TARGET_MANIFEST_H

#include "mlir/IR/Attributes.h"
#include "mlir/IR/Location.h"
#include "mlir/Support/LLVM.h"
#include "llvm/Support/JSON.h"

namespace mlir::diffattn {

/// The manifest format this compiler writes (`format_version`); bump it on
/// any change a runtime of the previous version would misread. The runtime
/// refuses manifests of other versions.
constexpr int64_t kManifestFormatVersion = 1;

/// `attr` as JSON: bools, integers, floats, strings, arrays and
/// dictionaries map to their JSON kinds; anything else to its printed form.
llvm::json::Value attributeToJSON(Attribute attr);

/// Collects kernel entries and writes DIR/manifest.json.
class ManifestWriter {
public:
  /// `compiler` is the producing tool and version, `target` the
  /// --target name, `host` the host CPU description, `source` the input
  /// file's name.
  ManifestWriter(StringRef compiler, StringRef target, StringRef host,
                 StringRef source);

  /// Adds one kernel's entry (in compile order).
  void addKernel(llvm::json::Object entry);

  /// Writes `dir`/manifest.json (2-space indented JSON and a newline);
  /// failures are emitted at `loc`.
  LogicalResult write(StringRef dir, Location loc) const;

private:
  std::string compiler, target, host, source;
  llvm::json::Array kernels;
};

} // namespace mlir::diffattn

#endif // DIFFATTN_TARGET_MANIFEST_H
