//===- runtime.cpp - diffattn runtime: load artifacts, launch kernels -----===//
//
// Implements include/diffattn/runtime.h: a minimal JSON reader for the
// manifest, argument checks against it, and kernel launches through the
// CUDA driver API opened with dlopen. Self-contained C++17; no MLIR, no
// CUDA headers.
//
//===----------------------------------------------------------------------===//

#include "diffattn/runtime.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

namespace {

thread_local std::string lastError;

int fail(int code, const std::string &message) {
  lastError = message;
  return code;
}

//===----------------------------------------------------------------------===//
// JSON
//===----------------------------------------------------------------------===//

struct Json;
using JsonArray = std::vector<Json>;
using JsonObject = std::map<std::string, Json>;

struct Json {
  std::variant<std::nullptr_t, bool, double, std::string, JsonArray, JsonObject>
      value;
  const Json *get(const std::string &key) const {
    auto *obj = std::get_if<JsonObject>(&value);
    if (!obj)
      return nullptr;
    auto it = obj->find(key);
    return it == obj->end() ? nullptr : &it->second;
  }
  const std::string *str() const { return std::get_if<std::string>(&value); }
  const double *num() const { return std::get_if<double>(&value); }
  const bool *boolean() const { return std::get_if<bool>(&value); }
  const JsonArray *arr() const { return std::get_if<JsonArray>(&value); }
  const JsonObject *obj() const { return std::get_if<JsonObject>(&value); }
};

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

//===----------------------------------------------------------------------===//
// CUDA driver, opened at run time
//===----------------------------------------------------------------------===//

using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUmodule = void *;
using CUfunction = void *;
using CUstream = void *;
constexpr int kMaxDynamicSharedAttr =
    8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES

// cuLaunchKernelEx's configuration (cuda.h, CUDA 12), for programmatic
// dependent launches.
constexpr int kLaunchAttrProgrammaticStreamSerialization = 6;
struct CUlaunchAttribute {
  int id;
  char pad[8 - sizeof(int)];
  union {
    char bytes[64];
    int programmaticStreamSerializationAllowed;
  } value;
};
struct CUlaunchConfig {
  unsigned gridDimX, gridDimY, gridDimZ;
  unsigned blockDimX, blockDimY, blockDimZ;
  unsigned sharedMemBytes;
  CUstream hStream;
  CUlaunchAttribute *attrs;
  unsigned numAttrs;
};
static_assert(sizeof(CUlaunchAttribute) == 72, "cuda.h's CUlaunchAttribute");

struct Driver {
  CUresult (*cuInit)(unsigned);
  CUresult (*cuCtxGetCurrent)(CUcontext *);
  CUresult (*cuCtxSetCurrent)(CUcontext);
  CUresult (*cuDeviceGet)(CUdevice *, int);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*cuModuleLoadData)(CUmodule *, const void *);
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, CUstream, void **,
                             void **);
  CUresult (*cuGetErrorString)(CUresult, const char **);
  /// Optional (CUDA 12 drivers): null where the driver lacks it, and then
  /// programmatic launches are plain ones.
  CUresult (*cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **,
                               void **);
};

/// The driver, or null with `why` saying what is missing.
const Driver *loadDriver(std::string &why) {
  static Driver driver;
  static bool loaded = false, tried = false;
  static std::string failure;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  why = failure;
  if (tried)
    return loaded ? &driver : nullptr;
  tried = true;
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char *err = dlerror();
    why = failure = err ? err : "dlopen(libcuda.so.1) failed";
    return nullptr;
  }
#define DIFFATTN_SYM(name, symbol)                                             \
  driver.name = reinterpret_cast<decltype(driver.name)>(dlsym(lib, symbol));   \
  if (!driver.name) {                                                          \
    why = failure = "libcuda.so.1 has no " symbol;                             \
    return nullptr;                                                            \
  }
  DIFFATTN_SYM(cuInit, "cuInit")
  DIFFATTN_SYM(cuCtxGetCurrent, "cuCtxGetCurrent")
  DIFFATTN_SYM(cuCtxSetCurrent, "cuCtxSetCurrent")
  DIFFATTN_SYM(cuDeviceGet, "cuDeviceGet")
  DIFFATTN_SYM(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain")
  DIFFATTN_SYM(cuModuleLoadData, "cuModuleLoadData")
  DIFFATTN_SYM(cuModuleGetFunction, "cuModuleGetFunction")
  DIFFATTN_SYM(cuFuncSetAttribute, "cuFuncSetAttribute")
  DIFFATTN_SYM(cuLaunchKernel, "cuLaunchKernel")
  DIFFATTN_SYM(cuGetErrorString, "cuGetErrorString")
#undef DIFFATTN_SYM
  driver.cuLaunchKernelEx = reinterpret_cast<decltype(driver.cuLaunchKernelEx)>(
      dlsym(lib, "cuLaunchKernelEx"));
  if (CUresult rc = driver.cuInit(0)) {
    why = failure = "cuInit failed with CUDA error " + std::to_string(rc);
    return nullptr;
  }
  loaded = true;
  return &driver;
}

int cudaFail(const Driver *d, CUresult rc, const std::string &what) {
  const char *text = nullptr;
  d->cuGetErrorString(rc, &text);
  return fail(DIFFATTN_ERROR_CUDA, what + " failed: CUDA error " +
                                       std::to_string(rc) + " (" +
                                       (text ? text : "unknown") + ")");
}

//===----------------------------------------------------------------------===//
// The model of a manifest
//===----------------------------------------------------------------------===//

/// A dimension: a symbol (B, Sq, Sk) or a fixed size. As a grid rule,
/// ceil(mul * symbol / size).
struct Dim {
  std::string symbol;
  int64_t size = 0;
  int64_t mul = 1;
};

/// The sizes of one launch: the caller's B, Sq, Sk and, for split-KV
/// kernels, the keys per split and the number of splits.
struct Sizes {
  int64_t B = 0, Sq = 0, Sk = 0, splitKeys = 0, splits = 0;
};

/// Resolves `dim` for the sizes of one launch (-1: an unknown symbol).
int64_t resolve(const Dim &dim, const Sizes &sizes) {
  if (dim.symbol.empty())
    return dim.size;
  if (dim.symbol == "B")
    return sizes.B;
  if (dim.symbol == "Sq")
    return sizes.Sq;
  if (dim.symbol == "Sk")
    return sizes.Sk;
  if (dim.symbol == "splits")
    return sizes.splits;
  if (dim.symbol == "split_keys")
    return sizes.splitKeys;
  return -1;
}

/// A symbol a launch knows a size for: the caller's or the split's.
bool isSizeSymbol(const std::string &symbol) {
  return !symbol.empty() && resolve({symbol, 0, 1}, Sizes{}) >= 0;
}

struct ArgSpec {
  std::string name;
  int32_t dtype = -1;
  std::vector<Dim> shape;
};

struct ParamSpec {
  std::string arg;
  std::string field; // allocated, aligned, offset, size, stride, value
};

/// A grid extent or size: the product of its factors.
using Rule = std::vector<Dim>;

/// One kernel launch of a kernel's launch sequence.
struct StageSpec {
  std::string function;
  std::vector<ParamSpec> params;
  Rule grid[3];
  unsigned block[3] = {1, 1, 1};
  int64_t sharedBytes = 0;
  /// May start before the previous stage on the stream ends (the kernel
  /// waits for it itself): a programmatic dependent launch.
  bool programmatic = false;
  /// Not launched when every listed size is at most its bound (symbol,
  /// bound): the previous stage then did this one's work.
  std::vector<std::pair<std::string, int64_t>> skipWhen;
  CUfunction handle = nullptr; // loaded state
};

struct KernelSpec {
  std::string name;
  std::vector<char> cubin;
  std::vector<ArgSpec> args; // tensor arguments in order
  std::vector<StageSpec> stages;
  /// f32 elements of the scratch buffer the stages share (empty: none).
  Rule workspace;
  /// Split-KV kernels: keys per split, fixed (splitFixed > 0) or picked per
  /// launch as a multiple of splitMultiple making about splitTarget CTAs.
  bool hasSplit = false;
  int64_t splitFixed = 0, splitMultiple = 0, splitTarget = 0;
  // Loaded state.
  CUcontext context = nullptr;
};

int dtypeFromName(const std::string &name) {
  if (name == "f32")
    return DIFFATTN_F32;
  if (name == "f16")
    return DIFFATTN_F16;
  if (name == "bf16")
    return DIFFATTN_BF16;
  if (name == "i32")
    return DIFFATTN_I32;
  return -1;
}

const char *dtypeName(int32_t dtype) {
  switch (dtype) {
  case DIFFATTN_F32:
    return "f32";
  case DIFFATTN_F16:
    return "f16";
  case DIFFATTN_BF16:
    return "bf16";
  case DIFFATTN_I32:
    return "i32";
  default:
    return "unknown";
  }
}

bool readFile(const std::string &path, std::string &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

int parseKernel(const Json &k, const std::string &dir, KernelSpec &spec) {
  auto bad = [&](const std::string &what) {
    return fail(DIFFATTN_ERROR_ARTIFACT,
                dir + "/manifest.json: kernel '" + spec.name + "': " + what);
  };
  const Json *name = k.get("name"), *entry = k.get("entry"),
             *cubin = k.get("cubin"), *args = k.get("args"),
             *launch = k.get("launch");
  if (!name || !name->str())
    return bad("no name");
  spec.name = *name->str();
  if (!entry || !entry->str() || !cubin || !cubin->str())
    return bad("no entry or cubin (not a GPU artifact?)");
  std::string bytes;
  if (!readFile(dir + "/" + *cubin->str(), bytes))
    return bad("cannot read " + *cubin->str());
  spec.cubin.assign(bytes.begin(), bytes.end());
  if (!args || !args->arr())
    return bad("no args");
  for (const Json &a : *args->arr()) {
    const Json *shape = a.get("shape");
    if (!shape)
      continue; // B, Sq, Sk
    ArgSpec arg;
    const Json *argName = a.get("name"), *dtype = a.get("dtype");
    if (!argName || !argName->str() || !dtype || !dtype->str() || !shape->arr())
      return bad("malformed argument");
    arg.name = *argName->str();
    arg.dtype = dtypeFromName(*dtype->str());
    for (const Json &d : *shape->arr()) {
      if (d.str())
        arg.shape.push_back({*d.str(), 0});
      else if (d.num())
        arg.shape.push_back({"", static_cast<int64_t>(*d.num())});
      else
        return bad("malformed shape of " + arg.name);
    }
    if (arg.dtype < 0 || arg.shape.size() > 4)
      return bad("unsupported argument " + arg.name);
    spec.args.push_back(std::move(arg));
  }
  if (!launch)
    return bad("no CUDA launch rule");
  // One factor of a rule: a number, or {ceil_div: sym, by, mul}.
  auto parseDim = [&](const Json &g, Dim &out) {
    if (g.num()) {
      out = {"", static_cast<int64_t>(*g.num()), 1};
      return true;
    }
    const Json *sym = g.get("ceil_div"), *by = g.get("by"), *mul = g.get("mul");
    if (!sym || !sym->str() || !by || !by->num())
      return false;
    out = {*sym->str(), static_cast<int64_t>(*by->num()),
           mul && mul->num() ? static_cast<int64_t>(*mul->num()) : 1};
    return out.size > 0 && out.mul > 0;
  };
  auto parseRule = [&](const Json &g, Rule &out) {
    out.clear();
    if (const Json *product = g.get("product")) {
      if (!product->arr())
        return false;
      for (const Json &factor : *product->arr()) {
        Dim d;
        if (!parseDim(factor, d))
          return false;
        out.push_back(d);
      }
      return !out.empty();
    }
    Dim d;
    if (!parseDim(g, d))
      return false;
    out.push_back(d);
    return true;
  };
  auto parseStage = [&](const Json &st, const std::string &function,
                        StageSpec &stage) -> int {
    stage.function = function;
    const Json *params = st.get("params"), *grid = st.get("grid"),
               *block = st.get("block");
    if (!params || !params->arr() || !grid || !grid->arr() || !block ||
        !block->arr() || grid->arr()->size() != 3 || block->arr()->size() != 3)
      return bad("malformed launch stage " + function);
    for (const Json &p : *params->arr()) {
      const Json *arg = p.get("arg"), *field = p.get("field");
      if (!arg || !arg->str() || !field || !field->str())
        return bad("malformed launch parameter");
      stage.params.push_back({*arg->str(), *field->str()});
    }
    for (int i = 0; i < 3; ++i) {
      if (!parseRule((*grid->arr())[i], stage.grid[i]))
        return bad("malformed grid");
      if (!(*block->arr())[i].num())
        return bad("malformed block");
      stage.block[i] = static_cast<unsigned>(*(*block->arr())[i].num());
    }
    if (const Json *smem = st.get("dynamic_shared_memory"))
      if (smem->num())
        stage.sharedBytes = static_cast<int64_t>(*smem->num());
    if (const Json *programmatic = st.get("programmatic_launch")) {
      if (!programmatic->boolean())
        return bad("malformed programmatic_launch of " + function);
      stage.programmatic = *programmatic->boolean();
    }
    if (const Json *skip = st.get("skip_when")) {
      if (!skip->obj() || skip->obj()->empty())
        return bad("malformed skip_when of " + function);
      for (const auto &[symbol, bound] : *skip->obj()) {
        if (!bound.num() || !isSizeSymbol(symbol))
          return bad("malformed skip_when of " + function);
        stage.skipWhen.emplace_back(symbol, static_cast<int64_t>(*bound.num()));
      }
    }
    return DIFFATTN_OK;
  };
  if (const Json *stages = launch->get("stages")) {
    if (!stages->arr() || stages->arr()->empty())
      return bad("malformed stages");
    for (const Json &st : *stages->arr()) {
      const Json *function = st.get("function");
      if (!function || !function->str())
        return bad("a stage has no function");
      spec.stages.emplace_back();
      if (int rc = parseStage(st, *function->str(), spec.stages.back()))
        return rc;
    }
  } else {
    if (!launch->get("params") || !launch->get("grid"))
      return bad("no CUDA launch rule");
    spec.stages.emplace_back();
    if (int rc = parseStage(*launch, *entry->str(), spec.stages.back()))
      return rc;
  }
  if (const Json *split = launch->get("split")) {
    const Json *fixed = split->get("fixed"),
               *multiple = split->get("multiple_of"),
               *target = split->get("target_ctas");
    spec.hasSplit = true;
    if (fixed && fixed->num() && *fixed->num() >= 1) {
      spec.splitFixed = static_cast<int64_t>(*fixed->num());
    } else if (multiple && multiple->num() && *multiple->num() >= 1 && target &&
               target->num() && *target->num() >= 1) {
      spec.splitMultiple = static_cast<int64_t>(*multiple->num());
      spec.splitTarget = static_cast<int64_t>(*target->num());
    } else {
      return bad("malformed split rule");
    }
  }
  if (const Json *ws = launch->get("workspace")) {
    const Json *times = ws->get("times");
    if (!parseRule(*ws, spec.workspace) || !times || !times->num())
      return bad("malformed workspace");
    spec.workspace.push_back({"", static_cast<int64_t>(*times->num()), 1});
  }
  return DIFFATTN_OK;
}

} // namespace

struct diffattn_module {
  std::string dir;
  std::vector<std::unique_ptr<KernelSpec>> kernels;
  std::mutex mutex;

  KernelSpec *find(const char *name) const {
    for (const auto &k : kernels)
      if (name && k->name == name)
        return k.get();
    return nullptr;
  }
};

namespace {

/// The value of a rule: the product of its factors, each a constant or
/// ceil(mul * symbol / by).
int64_t evaluate(const Rule &rule, const Sizes &sizes) {
  int64_t n = 1;
  for (const Dim &d : rule)
    n *= d.symbol.empty()
             ? d.size
             : (d.mul * resolve({d.symbol, 0, 1}, sizes) + d.size - 1) / d.size;
  return n;
}

/// The launch sizes of `spec` for B, Sq, Sk (>= 0). A split-KV kernel
/// without a fixed split gets the fewest splits that give its first stage
/// about splitTarget CTAs (one wave), each a multiple of splitMultiple keys.
Sizes sizesFor(const KernelSpec &spec, int64_t B, int64_t Sq, int64_t Sk) {
  Sizes sizes{B, Sq, Sk, 0, 0};
  if (!spec.hasSplit)
    return sizes;
  int64_t splitKeys = spec.splitFixed;
  if (!splitKeys) {
    Sizes one = sizes;
    one.splits = 1;
    one.splitKeys = std::max<int64_t>(Sk, 1);
    int64_t perSplit = 1;
    for (const Rule &rule : spec.stages.front().grid)
      perSplit *= std::max<int64_t>(evaluate(rule, one), 1);
    int64_t want = std::max<int64_t>(spec.splitTarget / perSplit, 1);
    int64_t most = std::max<int64_t>(
        (Sk + spec.splitMultiple - 1) / spec.splitMultiple, 1);
    int64_t splits = std::min(want, most);
    int64_t keys = (Sk + splits - 1) / splits;
    splitKeys = std::max<int64_t>((keys + spec.splitMultiple - 1) /
                                      spec.splitMultiple * spec.splitMultiple,
                                  spec.splitMultiple);
  }
  sizes.splitKeys = splitKeys;
  sizes.splits = (Sk + splitKeys - 1) / splitKeys;
  return sizes;
}

std::string shapeText(const int64_t *shape, int rank) {
  std::string text = "[";
  for (int i = 0; i < rank; ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

/// Checks a launch of `spec` against its manifest entry; on success fills
/// `ordered` (the buffers in argument order) and the launch's `sizes`.
int check(const KernelSpec &spec, const diffattn_buffer *buffers,
          int numBuffers, int64_t B, int64_t Sq, int64_t Sk,
          std::vector<const diffattn_buffer *> &ordered, Sizes &sizes) {
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
    std::string expected = "[";
    for (size_t d = 0; d < arg.shape.size(); ++d) {
      int64_t size = resolve(arg.shape[d], sizes);
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

/// The kernel `name` of `module`, or null after recording why not.
KernelSpec *findKernel(const diffattn_module *module, const char *name) {
  if (!module) {
    fail(DIFFATTN_ERROR_INVALID_ARGUMENT, "null module");
    return nullptr;
  }
  KernelSpec *spec = module->find(name);
  if (!spec)
    fail(DIFFATTN_ERROR_INVALID_ARGUMENT, std::string("no kernel '") +
                                              (name ? name : "(null)") +
                                              "' in " + module->dir);
  return spec;
}

} // namespace

extern "C" {

const char *diffattn_last_error(void) { return lastError.c_str(); }

int diffattn_module_load(const char *dir, diffattn_module **module) {
  if (!dir || !module)
    return fail(DIFFATTN_ERROR_INVALID_ARGUMENT, "null argument");
  *module = nullptr;
  std::string text;
  std::string path = std::string(dir) + "/manifest.json";
  if (!readFile(path, text))
    return fail(DIFFATTN_ERROR_ARTIFACT, "cannot read " + path);
  Json root;
  std::string error;
  if (!JsonParser(text).parse(root, error))
    return fail(DIFFATTN_ERROR_ARTIFACT, path + ": " + error);
  const Json *kernels = root.get("kernels");
  if (!kernels || !kernels->arr())
    return fail(DIFFATTN_ERROR_ARTIFACT, path + ": no kernels");
  auto result = std::make_unique<diffattn_module>();
  result->dir = dir;
  for (const Json &k : *kernels->arr()) {
    auto spec = std::make_unique<KernelSpec>();
    if (int rc = parseKernel(k, dir, *spec))
      return rc;
    result->kernels.push_back(std::move(spec));
  }
  *module = result.release();
  return DIFFATTN_OK;
}

void diffattn_module_free(diffattn_module *module) { delete module; }

int diffattn_module_num_kernels(const diffattn_module *module) {
  return module ? static_cast<int>(module->kernels.size()) : 0;
}

const char *diffattn_module_kernel_name(const diffattn_module *module, int i) {
  if (!module || i < 0 || i >= static_cast<int>(module->kernels.size()))
    return nullptr;
  return module->kernels[i]->name.c_str();
}

int diffattn_check(const diffattn_module *module, const char *kernel,
                   const diffattn_buffer *buffers, int num_buffers, int64_t B,
                   int64_t Sq, int64_t Sk) {
  const KernelSpec *spec = findKernel(module, kernel);
  if (!spec)
    return DIFFATTN_ERROR_INVALID_ARGUMENT;
  std::vector<const diffattn_buffer *> ordered;
  Sizes sizes;
  return check(*spec, buffers, num_buffers, B, Sq, Sk, ordered, sizes);
}

int diffattn_launch(diffattn_module *module, const char *kernel,
                    const diffattn_buffer *buffers, int num_buffers, int64_t B,
                    int64_t Sq, int64_t Sk, void *stream) {
  KernelSpec *found = findKernel(module, kernel);
  if (!found)
    return DIFFATTN_ERROR_INVALID_ARGUMENT;
  KernelSpec &spec = *found;
  std::vector<const diffattn_buffer *> ordered;
  Sizes sizes;
  if (int rc = check(spec, buffers, num_buffers, B, Sq, Sk, ordered, sizes))
    return rc;

  const Driver *d = nullptr;
  std::lock_guard<std::mutex> lock(module->mutex);
  for (StageSpec &stage : spec.stages) {
    if (!stage.skipWhen.empty() &&
        std::all_of(
            stage.skipWhen.begin(), stage.skipWhen.end(),
            [&](const auto &bound) {
              return resolve({bound.first, 0, 1}, sizes) <= bound.second;
            }))
      continue;
    // Nothing to compute: no launch (a zero grid dimension is an error).
    unsigned grid[3];
    bool empty = false;
    for (int i = 0; i < 3; ++i) {
      int64_t n = evaluate(stage.grid[i], sizes);
      if (n <= 0) {
        empty = true;
        break;
      }
      // CUDA's grid limits: x < 2^31, y and z <= 65535.
      if (n > (i == 0 ? int64_t(0x7fffffff) : int64_t(65535)))
        return fail(DIFFATTN_ERROR_INVALID_ARGUMENT,
                    "kernel '" + spec.name + "': grid dimension " +
                        std::to_string(i) + " would be " + std::to_string(n) +
                        ", over CUDA's limit");
      grid[i] = static_cast<unsigned>(n);
    }
    if (empty)
      continue;

    if (!d) {
      std::string why;
      d = loadDriver(why);
      if (!d)
        return fail(DIFFATTN_ERROR_NO_DRIVER,
                    "the CUDA driver is not available: " + why);
      CUcontext ctx = nullptr;
      if (CUresult rc = d->cuCtxGetCurrent(&ctx))
        return cudaFail(d, rc, "cuCtxGetCurrent");
      if (!ctx) {
        CUdevice dev;
        if (CUresult rc = d->cuDeviceGet(&dev, 0))
          return cudaFail(d, rc, "cuDeviceGet");
        if (CUresult rc = d->cuDevicePrimaryCtxRetain(&ctx, dev))
          return cudaFail(d, rc, "cuDevicePrimaryCtxRetain");
        if (CUresult rc = d->cuCtxSetCurrent(ctx))
          return cudaFail(d, rc, "cuCtxSetCurrent");
      }
      if (spec.context != ctx) {
        CUmodule mod;
        if (CUresult rc = d->cuModuleLoadData(&mod, spec.cubin.data()))
          return cudaFail(d, rc, "cuModuleLoadData(" + spec.name + ")");
        for (StageSpec &st : spec.stages) {
          if (CUresult rc =
                  d->cuModuleGetFunction(&st.handle, mod, st.function.c_str()))
            return cudaFail(d, rc, "cuModuleGetFunction(" + st.function + ")");
          // Without the opt-in a CTA gets 48 KiB of shared memory in all,
          // static (a byte or so of the module's) included: opt in for
          // any dynamic shared memory.
          if (st.sharedBytes > 0)
            if (CUresult rc =
                    d->cuFuncSetAttribute(st.handle, kMaxDynamicSharedAttr,
                                          static_cast<int>(st.sharedBytes)))
              return cudaFail(d, rc, "cuFuncSetAttribute(shared memory)");
        }
        spec.context = ctx;
      }
    }

    // Kernel parameters: memref descriptor fields of each buffer, then sizes.
    std::vector<int64_t> values(stage.params.size());
    std::vector<void *> pointers(stage.params.size());
    std::vector<void *> args(stage.params.size());
    for (size_t i = 0; i < stage.params.size(); ++i) {
      const ParamSpec &p = stage.params[i];
      if (p.field == "value") {
        values[i] = resolve({p.arg, 0, 1}, sizes);
        args[i] = &values[i];
        continue;
      }
      const diffattn_buffer *buf = nullptr;
      for (const diffattn_buffer *candidate : ordered)
        if (p.arg == candidate->name)
          buf = candidate;
      if (!buf)
        return fail(DIFFATTN_ERROR_ARTIFACT, "kernel '" + spec.name +
                                                 "': launch parameter of "
                                                 "unknown argument '" +
                                                 p.arg + "'");
      if (p.field == "allocated" || p.field == "aligned") {
        pointers[i] = buf->data;
        args[i] = &pointers[i];
      } else if (p.field == "offset") {
        values[i] = 0;
        args[i] = &values[i];
      } else if (p.field == "size") {
        int64_t n = 1;
        for (int dd = 0; dd < buf->rank; ++dd)
          n *= buf->shape[dd];
        values[i] = n;
        args[i] = &values[i];
      } else if (p.field == "stride") {
        values[i] = 1;
        args[i] = &values[i];
      } else {
        return fail(DIFFATTN_ERROR_ARTIFACT,
                    "kernel '" + spec.name + "': unknown parameter field '" +
                        p.field + "'");
      }
    }
    if (stage.programmatic && d->cuLaunchKernelEx) {
      CUlaunchAttribute attr = {};
      attr.id = kLaunchAttrProgrammaticStreamSerialization;
      attr.value.programmaticStreamSerializationAllowed = 1;
      CUlaunchConfig config = {};
      config.gridDimX = grid[0];
      config.gridDimY = grid[1];
      config.gridDimZ = grid[2];
      config.blockDimX = stage.block[0];
      config.blockDimY = stage.block[1];
      config.blockDimZ = stage.block[2];
      config.sharedMemBytes = static_cast<unsigned>(stage.sharedBytes);
      config.hStream = static_cast<CUstream>(stream);
      config.attrs = &attr;
      config.numAttrs = 1;
      if (CUresult rc =
              d->cuLaunchKernelEx(&config, stage.handle, args.data(), nullptr))
        return cudaFail(d, rc, "cuLaunchKernelEx(" + stage.function + ")");
      continue;
    }
    if (CUresult rc = d->cuLaunchKernel(
            stage.handle, grid[0], grid[1], grid[2], stage.block[0],
            stage.block[1], stage.block[2],
            static_cast<unsigned>(stage.sharedBytes),
            static_cast<CUstream>(stream), args.data(), nullptr))
      return cudaFail(d, rc, "cuLaunchKernel(" + stage.function + ")");
  }
  return DIFFATTN_OK;
}

int64_t diffattn_workspace_elements(const diffattn_module *module,
                                    const char *kernel, int64_t B, int64_t Sq,
                                    int64_t Sk) {
  const KernelSpec *spec = findKernel(module, kernel);
  if (!spec)
    return -1;
  if (B < 0 || Sq < 0 || Sk < 0)
    return 0;
  return spec->workspace.empty()
             ? 0
             : evaluate(spec->workspace, sizesFor(*spec, B, Sq, Sk));
}

} // extern "C"
