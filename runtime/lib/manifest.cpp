//===- manifest.cpp - the runtime's model of manifest.json ----------------===//
//
// Parses manifest.json into KernelSpecs and evaluates their rules for the
// sizes of a launch. Every refusal names the manifest, the kernel and what
// is wrong with its entry.
//
//===----------------------------------------------------------------------===//

#include "manifest.h"

#include "diffattn/runtime.h"
#include "error.h"
#include "json.h"

#include <algorithm>
#include <fstream>
#include <sstream>

using namespace diffattn::runtime;

//===----------------------------------------------------------------------===//
// Sizes and rules
//===----------------------------------------------------------------------===//

int64_t diffattn::runtime::resolve(const Dim &dim, const Sizes &sizes) {
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
  if (dim.symbol == "num_blocks")
    return sizes.numBlocks;
  if (dim.symbol == "total_q")
    return sizes.totalQ;
  if (dim.symbol == "total_k")
    return sizes.totalK;
  return -1;
}

int64_t *diffattn::runtime::freeSize(Sizes &sizes, const std::string &symbol) {
  if (symbol == "num_blocks")
    return &sizes.numBlocks;
  if (symbol == "total_q")
    return &sizes.totalQ;
  if (symbol == "total_k")
    return &sizes.totalK;
  return nullptr;
}

bool diffattn::runtime::isSizeSymbol(const std::string &symbol) {
  Sizes known;
  known.numBlocks = known.totalQ = known.totalK = 0;
  return !symbol.empty() && resolve({symbol, 0, 1}, known) >= 0;
}

int64_t diffattn::runtime::shapeDimSize(const Dim &dim, const Sizes &sizes) {
  if (dim.symbol.empty())
    return dim.size;
  int64_t value = resolve({dim.symbol, 0, 1}, sizes);
  if (dim.size <= 0 || value < 0)
    return value;
  return (dim.mul * value + dim.size - 1) / dim.size + dim.add;
}

int64_t diffattn::runtime::evaluate(const Rule &rule, const Sizes &sizes) {
  int64_t n = 1;
  for (const Dim &d : rule)
    n *= d.symbol.empty()
             ? d.size
             : (d.mul * resolve({d.symbol, 0, 1}, sizes) + d.size - 1) / d.size;
  return rule.atMost > 0 ? std::min(n, rule.atMost) : n;
}

Sizes diffattn::runtime::sizesFor(const KernelSpec &spec, int64_t B, int64_t Sq,
                                  int64_t Sk) {
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

//===----------------------------------------------------------------------===//
// Element types
//===----------------------------------------------------------------------===//

namespace {

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

} // namespace

const char *diffattn::runtime::dtypeName(int32_t dtype) {
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

//===----------------------------------------------------------------------===//
// Parsing
//===----------------------------------------------------------------------===//

namespace {

bool readFile(const std::string &path, std::string &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

/// One factor of a rule: a number, or {ceil_div: sym, by, mul}.
bool parseDim(const Json &g, Dim &out) {
  if (g.num()) {
    out = {"", static_cast<int64_t>(*g.num()), 1};
    return true;
  }
  const Json *sym = g.get("ceil_div"), *by = g.get("by"), *mul = g.get("mul");
  if (!sym || !sym->str() || !by || !by->num())
    return false;
  const Json *add = g.get("add");
  out = {*sym->str(), static_cast<int64_t>(*by->num()),
         mul && mul->num() ? static_cast<int64_t>(*mul->num()) : 1,
         add && add->num() ? static_cast<int64_t>(*add->num()) : 0};
  return out.size > 0 && out.mul > 0 && out.add >= 0;
}

/// A rule: one factor, or {product: [factor, ...], at_most: N (optional,
/// >= 1)}.
bool parseRule(const Json &g, Rule &out) {
  out.clear();
  out.atMost = 0;
  if (const Json *product = g.get("product")) {
    if (!product->arr())
      return false;
    for (const Json &factor : *product->arr()) {
      Dim d;
      if (!parseDim(factor, d))
        return false;
      out.push_back(d);
    }
    if (const Json *atMost = g.get("at_most")) {
      if (!atMost->num() || *atMost->num() < 1)
        return false;
      out.atMost = static_cast<int64_t>(*atMost->num());
    }
    return !out.empty();
  }
  Dim d;
  if (!parseDim(g, d))
    return false;
  out.push_back(d);
  return true;
}

/// Fills `stage` from the launch stage `st` of `function`; returns what is
/// malformed ("" when nothing is).
std::string parseStage(const Json &st, const std::string &function,
                       StageSpec &stage) {
  stage.function = function;
  const Json *params = st.get("params"), *grid = st.get("grid"),
             *block = st.get("block");
  if (!params || !params->arr() || !grid || !grid->arr() || !block ||
      !block->arr() || grid->arr()->size() != 3 || block->arr()->size() != 3)
    return "malformed launch stage " + function;
  for (const Json &p : *params->arr()) {
    const Json *arg = p.get("arg"), *field = p.get("field");
    if (!arg || !arg->str() || !field || !field->str())
      return "malformed launch parameter";
    ParamSpec param{*arg->str(), *field->str(), {}, 0};
    if (param.field == "tensor_map") {
      const Json *box = p.get("box"), *swizzle = p.get("swizzle");
      if (!box || !box->arr() || box->arr()->size() != 4 || !swizzle ||
          !swizzle->num())
        return "malformed tensor_map parameter of " + function;
      for (const Json &extent : *box->arr()) {
        if (!extent.num() || *extent.num() < 1 || *extent.num() > 256)
          return "malformed tensor_map box of " + function;
        param.box.push_back(static_cast<int64_t>(*extent.num()));
      }
      param.swizzle = static_cast<int64_t>(*swizzle->num());
      if (param.swizzle != 0 && param.swizzle != 32 && param.swizzle != 64 &&
          param.swizzle != 128)
        return "malformed tensor_map swizzle of " + function;
    }
    stage.params.push_back(std::move(param));
  }
  for (int i = 0; i < 3; ++i) {
    if (!parseRule((*grid->arr())[i], stage.grid[i]))
      return "malformed grid";
    if (!(*block->arr())[i].num())
      return "malformed block";
    stage.block[i] = static_cast<unsigned>(*(*block->arr())[i].num());
  }
  if (const Json *smem = st.get("dynamic_shared_memory"))
    if (smem->num())
      stage.sharedBytes = static_cast<int64_t>(*smem->num());
  if (const Json *programmatic = st.get("programmatic_launch")) {
    if (!programmatic->boolean())
      return "malformed programmatic_launch of " + function;
    stage.programmatic = *programmatic->boolean();
  }
  if (const Json *skip = st.get("skip_when")) {
    if (!skip->obj() || skip->obj()->empty())
      return "malformed skip_when of " + function;
    for (const auto &[symbol, bound] : *skip->obj()) {
      if (!bound.num() || !isSizeSymbol(symbol))
        return "malformed skip_when of " + function;
      stage.skipWhen.emplace_back(symbol, static_cast<int64_t>(*bound.num()));
    }
  }
  return "";
}

/// A manifest number as it was written: 7, 1.5.
std::string numberText(double value) {
  std::ostringstream os;
  os << value;
  return os.str();
}

} // namespace

int diffattn::runtime::parseKernel(const Json &k, const std::string &dir,
                                   KernelSpec &spec) {
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
  if (const Json *chip = k.get("chip"); chip && chip->str())
    spec.chip = *chip->str();
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
      Dim rule;
      if (d.str() && isSizeSymbol(*d.str()))
        arg.shape.push_back({*d.str(), 0});
      else if (d.num())
        arg.shape.push_back({"", static_cast<int64_t>(*d.num())});
      else if (!d.str() && parseDim(d, rule) && isSizeSymbol(rule.symbol))
        arg.shape.push_back(rule);
      else
        return bad("malformed shape of " + arg.name);
    }
    if (arg.dtype < 0 || arg.shape.size() > 4)
      return bad("unsupported argument " + arg.name);
    spec.args.push_back(std::move(arg));
  }
  if (!launch)
    return bad("no CUDA launch rule");
  if (const Json *stages = launch->get("stages")) {
    if (!stages->arr() || stages->arr()->empty())
      return bad("malformed stages");
    for (const Json &st : *stages->arr()) {
      const Json *function = st.get("function");
      if (!function || !function->str())
        return bad("a stage has no function");
      spec.stages.emplace_back();
      std::string what = parseStage(st, *function->str(), spec.stages.back());
      if (!what.empty())
        return bad(what);
    }
  } else {
    if (!launch->get("params") || !launch->get("grid"))
      return bad("no CUDA launch rule");
    spec.stages.emplace_back();
    std::string what = parseStage(*launch, *entry->str(), spec.stages.back());
    if (!what.empty())
      return bad(what);
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

int diffattn::runtime::loadManifest(
    const std::string &dir, std::vector<std::unique_ptr<KernelSpec>> &kernels) {
  std::string text;
  std::string path = dir + "/manifest.json";
  if (!readFile(path, text))
    return fail(DIFFATTN_ERROR_ARTIFACT, "cannot read " + path);
  Json root;
  std::string error;
  if (!parseJson(text, root, error))
    return fail(DIFFATTN_ERROR_ARTIFACT, path + ": " + error);
  // The version first: the rest of an unknown version means nothing here.
  const std::string reads =
      "format_version " + std::to_string(kManifestFormatVersion);
  const std::string rebuild =
      "; rebuild the kernels with a matching diffattn-compile";
  const Json *version = root.get("format_version");
  std::string refused;
  if (!version)
    refused = "no format_version (this runtime reads " + reads + ")";
  else if (!version->num())
    refused =
        "format_version is not a number (this runtime reads " + reads + ")";
  else if (*version->num() != kManifestFormatVersion)
    refused = "format_version " + numberText(*version->num()) +
              " is not supported by this runtime (it reads " + reads + ")";
  if (!refused.empty())
    return fail(DIFFATTN_ERROR_ARTIFACT, path + ": " + refused + rebuild);
  const Json *list = root.get("kernels");
  if (!list || !list->arr())
    return fail(DIFFATTN_ERROR_ARTIFACT, path + ": no kernels");
  for (const Json &k : *list->arr()) {
    auto spec = std::make_unique<KernelSpec>();
    if (int rc = parseKernel(k, dir, *spec))
      return rc;
    kernels.push_back(std::move(spec));
  }
  return DIFFATTN_OK;
}
