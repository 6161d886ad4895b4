//===- Manifest.cpp - the manifest written by diffattn-compile ------------===//
//
// See Manifest.h and docs/manifest.md.
//
//===----------------------------------------------------------------------===//

#include "diffattn/Target/Manifest.h"

#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/ToolOutputFile.h"

using namespace mlir;
using namespace mlir::diffattn;

llvm::json::Value mlir::diffattn::attributeToJSON(Attribute attr) {
  if (auto b = dyn_cast<BoolAttr>(attr))
    return b.getValue();
  if (auto i = dyn_cast<IntegerAttr>(attr))
    return i.getInt();
  if (auto f = dyn_cast<FloatAttr>(attr))
    return f.getValueAsDouble();
  if (auto s = dyn_cast<StringAttr>(attr))
    return s.getValue().str();
  if (auto a = dyn_cast<ArrayAttr>(attr)) {
    llvm::json::Array array;
    for (Attribute element : a)
      array.push_back(attributeToJSON(element));
    return array;
  }
  if (auto d = dyn_cast<DictionaryAttr>(attr)) {
    llvm::json::Object object;
    for (NamedAttribute named : d)
      object[named.getName().getValue()] = attributeToJSON(named.getValue());
    return object;
  }
  std::string text;
  llvm::raw_string_ostream os(text);
  attr.print(os);
  return text;
}

ManifestWriter::ManifestWriter(StringRef compiler, StringRef target,
                               StringRef host, StringRef source)
    : compiler(compiler), target(target), host(host), source(source) {}

void ManifestWriter::addKernel(llvm::json::Object entry) {
  kernels.push_back(std::move(entry));
}

LogicalResult ManifestWriter::write(StringRef dir, Location loc) const {
  llvm::json::Object manifest{{"format_version", kManifestFormatVersion},
                              {"compiler", compiler},
                              {"target", target},
                              {"host", host},
                              {"source", source},
                              {"kernels", llvm::json::Array(kernels)}};
  llvm::SmallString<256> path(dir);
  llvm::sys::path::append(path, "manifest.json");
  std::string errorMessage;
  auto output = openOutputFile(path, &errorMessage);
  if (!output)
    return emitError(loc) << errorMessage;
  output->os() << llvm::formatv("{0:2}", llvm::json::Value(std::move(manifest)))
               << "\n";
  output->keep();
  return success();
}
