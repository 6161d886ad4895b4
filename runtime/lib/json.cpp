//===- json.cpp - a small JSON reader for manifest.json -------------------===//
//
// A recursive-descent parser over the manifest's text. It is total: any
// input either parses or yields an error with the offset where parsing
// stopped; it never reads past the end of the text.
//
//===----------------------------------------------------------------------===//

#include "json.h"

#include <cctype>
#include <cstdlib>
#include <cstring>

using namespace diffattn::runtime;

const Json *Json::get(const std::string &key) const {
  auto *obj = std::get_if<JsonObject>(&value);
  if (!obj)
    return nullptr;
  auto it = obj->find(key);
  return it == obj->end() ? nullptr : &it->second;
}

namespace {

class JsonParser {
public:
  explicit JsonParser(const std::string &text) : s(text) {}

  bool parse(Json &out, std::string &error) {
    bool ok = value(out) && (skip(), pos == s.size());
    if (!ok)
      error = "malformed JSON near offset " + std::to_string(pos);
    return ok;
  }

private:
  void skip() {
    while (pos < s.size() && std::isspace(static_cast<unsigned char>(s[pos])))
      ++pos;
  }
  bool literal(const char *word) {
    size_t n = std::strlen(word);
    if (s.compare(pos, n, word) != 0)
      return false;
    pos += n;
    return true;
  }
  bool string(std::string &out) {
    if (pos >= s.size() || s[pos] != '"')
      return false;
    ++pos;
    while (pos < s.size() && s[pos] != '"') {
      char c = s[pos++];
      if (c == '\\') {
        if (pos >= s.size())
          return false;
        char e = s[pos++];
        switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'u':
          if (pos + 4 > s.size())
            return false;
          out += '?'; // manifests are ASCII; keep the parser total
          pos += 4;
          break;
        default:
          out += e;
          break;
        }
      } else {
        out += c;
      }
    }
    if (pos >= s.size())
      return false;
    ++pos;
    return true;
  }
  bool value(Json &out) {
    if (++depth > 64)
      return false;
    skip();
    bool ok = false;
    if (pos >= s.size()) {
      ok = false;
    } else if (s[pos] == '{') {
      ++pos;
      JsonObject obj;
      skip();
      if (pos < s.size() && s[pos] == '}') {
        ++pos;
        ok = true;
      } else {
        while (true) {
          skip();
          std::string key;
          Json item;
          if (!string(key))
            break;
          skip();
          if (pos >= s.size() || s[pos++] != ':')
            break;
          if (!value(item))
            break;
          obj[key] = std::move(item);
          skip();
          if (pos < s.size() && s[pos] == ',') {
            ++pos;
            continue;
          }
          ok = pos < s.size() && s[pos++] == '}';
          break;
        }
      }
      out.value = std::move(obj);
    } else if (s[pos] == '[') {
      ++pos;
      JsonArray arr;
      skip();
      if (pos < s.size() && s[pos] == ']') {
        ++pos;
        ok = true;
      } else {
        while (true) {
          Json item;
          if (!value(item))
            break;
          arr.push_back(std::move(item));
          skip();
          if (pos < s.size() && s[pos] == ',') {
            ++pos;
            continue;
          }
          ok = pos < s.size() && s[pos++] == ']';
          break;
        }
      }
      out.value = std::move(arr);
    } else if (s[pos] == '"') {
      std::string str;
      ok = string(str);
      out.value = std::move(str);
    } else if (literal("true")) {
      out.value = true;
      ok = true;
    } else if (literal("false")) {
      out.value = false;
      ok = true;
    } else if (literal("null")) {
      out.value = nullptr;
      ok = true;
    } else {
      char *end = nullptr;
      double d = std::strtod(s.c_str() + pos, &end);
      if (end != s.c_str() + pos) {
        pos = end - s.c_str();
        out.value = d;
        ok = true;
      }
    }
    --depth;
    return ok;
  }

  const std::string &s;
  size_t pos = 0;
  int depth = 0;
};

} // namespace

bool diffattn::runtime::parseJson(const std::string &text, Json &out,
                                  std::string &error) {
  return JsonParser(text).parse(out, error);
}
