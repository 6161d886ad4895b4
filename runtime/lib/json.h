//===- json.h - a small JSON reader for manifest.json -----------*- C++ -*-===//
//
// The runtime's JSON reader: enough of JSON to read the manifest that
// diffattn-compile writes (objects, arrays, strings, numbers, booleans,
// null), with no dependency beyond the C++17 standard library. Not a
// general-purpose parser: \u escapes read as '?' (manifests are ASCII) and
// nesting deeper than 64 levels is refused.
//
//===----------------------------------------------------------------------===//

#ifndef DIFFATTN_RUNTIME_LIB_JSON_H
#define DIFFATTN_RUNTIME_LIB_JSON_H

#include <map>
#include <string>
#include <variant>
#include <vector>

namespace diffattn::runtime {

struct Json;
using JsonArray = std::vector<Json>;
using JsonObject = std::map<std::string, Json>;

/// One JSON value. The accessors return null where the value has another
/// type, so a reader tests presence and type in one step.
struct Json {
  std::variant<std::nullptr_t, bool, double, std::string, JsonArray, JsonObject>
      value;

  /// The member `key` of an object; null for a missing key or a non-object.
  const Json *get(const std::string &key) const;
  const std::string *str() const { return std::get_if<std::string>(&value); }
  const double *num() const { return std::get_if<double>(&value); }
  const bool *boolean() const { return std::get_if<bool>(&value); }
  const JsonArray *arr() const { return std::get_if<JsonArray>(&value); }
  const JsonObject *obj() const { return std::get_if<JsonObject>(&value); }
};

/// Parses `text` (one JSON value, surrounded by optional white space) into
/// `out`. On failure returns false with `error` saying where the text stops
/// being JSON ("malformed JSON near offset N").
bool parseJson(const std::string &text, Json &out, std::string &error);

} // namespace diffattn::runtime

#endif // DIFFATTN_RUNTIME_LIB_JSON_H
