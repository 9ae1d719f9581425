// saliency_cpu against the naive double-precision statement (saliency_naive.h)
// at odd sizes (N not a multiple of the key tile, rows not a multiple of the
// register block, D = 1 and 72), strided k / v / q, every score, reduction and
// element type (float16 / bfloat16 read exactly: grid values).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu_tiles.h"
#include "saliency_cpu.h"
#include "saliency_naive.h"

namespace {

using obc::Score;

struct Case {
  int64_t B, H, G, W, N, D;
  int64_t pad;  // extra elements per key / query row (non-contiguous strides)
  bool causal;
};

struct Data {
  std::vector<float> k, v, q;
  int64_t k_sn, k_sh, k_sb, q_sw, q_sh, q_sb;
};

Data make(const Case& c, std::mt19937& rng) {
  Data d;
  d.k_sn = c.D + c.pad, d.k_sh = (c.N + 2) * d.k_sn, d.k_sb = c.H * d.k_sh;
  d.q_sw = c.D + c.pad, d.q_sh = c.W * d.q_sw, d.q_sb = c.H * c.G * d.q_sh;
  d.k = naive::grid_values(c.B * d.k_sb, rng);
  d.v = naive::grid_values(c.B * d.k_sb, rng);
  d.q = naive::grid_values(c.B * d.q_sb, rng);
  return d;
}

// Params of case c over d's layout, with elements k, v, q of type dt.
obc::SaliencyParams params(const Case& c, const Data& d, const void* k, const void* v, const void* q, obc::DType dt,
                           Score s, float scale) {
  obc::SaliencyParams p;
  p.k = k, p.v = v, p.q = q, p.dtype = dt;
  p.B = c.B, p.Hkv = c.H, p.G = c.G, p.W = c.W, p.N = c.N, p.D = c.D;
  p.k_sb = p.v_sb = d.k_sb, p.k_sh = p.v_sh = d.k_sh, p.k_sn = p.v_sn = d.k_sn;
  p.q_sb = d.q_sb, p.q_sh = d.q_sh, p.q_sw = d.q_sw;
  p.scale = scale, p.causal = c.causal, p.score = s;
  return p;
}

// The naive statement of p on d's float values.
std::vector<double> naive_of(const obc::SaliencyParams& p, const Data& d, double scale) {
  return naive::saliency(p, {d.k.data(), d.k_sb, d.k_sh, d.k_sn}, {d.v.data(), d.k_sb, d.k_sh, d.k_sn},
                         {d.q.data(), d.q_sb, d.q_sh, d.q_sw}, scale);
}

template <typename E>
std::vector<E> convert(const std::vector<float>& x) {
  std::vector<E> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = naive::from_float<E>(x[i]);
  return y;
}

std::string describe(const Case& c, Score s, obc::GroupReduce gr, obc::QueryReduce qr) {
  return "B=" + std::to_string(c.B) + " H=" + std::to_string(c.H) + " G=" + std::to_string(c.G) +
         " W=" + std::to_string(c.W) + " N=" + std::to_string(c.N) + " D=" + std::to_string(c.D) +
         " causal=" + std::to_string(c.causal) + " score=" + std::to_string(static_cast<int>(s)) +
         " group=" + std::to_string(static_cast<int>(gr)) + " query=" + std::to_string(static_cast<int>(qr));
}

// The split form (saliency_cpu.h): every range's pass 1 (one at a time,
// as threads would in any order), then pass 2 in chunks of `chunk` ranges
// (a chunk crossing rows is cut there, as the binding does); with each
// row's logits kept between the passes, or recomputed.
void run_split(const obc::SaliencyParams& p, int64_t chunk, bool keep_logits) {
  const int64_t rows = p.B * p.Hkv, S = obc::saliency_cpu_ranges(p);
  const size_t st = obc::saliency_cpu_split_state_bytes(p), zb = obc::saliency_cpu_split_logit_bytes(p);
  std::vector<double> states(rows * S * st / sizeof(double) + 8);
  std::vector<double> ws(obc::saliency_cpu_split_workspace_bytes(p) / sizeof(double) + 8);
  std::vector<double> logits(keep_logits ? rows * zb / sizeof(double) + 8 : 0);
  char* base = reinterpret_cast<char*>(states.data());
  auto row_logits = [&](int64_t bh) {
    return keep_logits ? reinterpret_cast<char*>(logits.data()) + bh * zb : nullptr;
  };
  for (int64_t t = rows * S - 1; t >= 0; --t)  // last range first: order must not matter
    obc::saliency_cpu_split_pass1(p, t / S, t % S, ws.data(), base + t * st, row_logits(t / S));
  for (int64_t bh = 0; bh < rows; ++bh)
    for (int64_t s = 0; s < S; s += chunk)
      obc::saliency_cpu_split_pass2(p, bh, s, std::min(S, s + chunk), base + bh * S * st, ws.data(),
                                    row_logits(bh));
}

// Runs the kernel for element type E on every score x reduction, whole rows
// and split over the keys.
template <typename E, typename Out>
void check_case(const Case& c, obc::DType dt, double rtol, std::mt19937& rng) {
  const Data d = make(c, rng);
  const std::vector<E> k = convert<E>(d.k), v = convert<E>(d.v), q = convert<E>(d.q);
  const double scale = 0.25;  // exact in float: no scale rounding in the comparison
  for (int s = 0; s < 7; ++s)
    for (auto gr : {obc::GroupReduce::Sum, obc::GroupReduce::Mean, obc::GroupReduce::Max})
      for (auto qr : {obc::QueryReduce::Sum, obc::QueryReduce::Max}) {
        obc::SaliencyParams p =
            params(c, d, k.data(), v.data(), q.data(), dt, static_cast<Score>(s), static_cast<float>(scale));
        p.group_reduce = gr, p.query_reduce = qr;
        const std::vector<double> want = naive_of(p, d, scale);
        double mag = 0;
        for (double w : want) mag = std::max(mag, std::fabs(w));
        for (int form : {0, 1, 2}) {  // whole rows; split, logits recomputed; split, logits kept
          const bool split = form > 0;
          std::vector<Out> got(want.size(), Out(-12345));
          p.out = got.data();
          if (split) {
            run_split(p, 1, form == 2);
          } else {
            std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / sizeof(double) + 8);
            // Two halves of the (b, h) range, as two parallel_for chunks would.
            const int64_t rows = c.B * c.H, mid = rows / 2;
            obc::saliency_cpu(p, 0, mid, ws.data());
            obc::saliency_cpu(p, mid, rows, ws.data());
          }
          for (size_t i = 0; i < want.size(); ++i)
            ASSERT_NEAR(static_cast<double>(got[i]), want[i], rtol * std::max(mag, 1e-30))
                << describe(c, p.score, gr, qr) << " form " << form << " at " << i;
        }
      }
}

const Case kCases[] = {
    {1, 1, 1, 1, 1, 1, 0, true},     // the smallest
    {2, 2, 3, 5, 33, 7, 3, true},    // N = tile + 1, rows = 15 (block remainder)
    {1, 3, 1, 1, 100, 72, 5, true},  // W = 1, G = 1, D = 72
    {1, 1, 4, 9, 9, 16, 0, true},    // N = W
    {2, 1, 2, 6, 65, 32, 1, false},  // non-causal
    {1, 2, 3, 32, 64, 8, 0, true},   // exact tiles
    {1, 2, 2, 80, 80, 12, 0, true},  // every key a query (H2O): blocks past a tile are skipped
    // More than kSaliencyMinRangeKeys (512) keys: several key ranges, so the
    // split forms merge states (every element type, score and reduction).
    {1, 2, 2, 5, 1101, 8, 1, true},
    {2, 1, 3, 4, 513, 6, 0, false},
};

TEST(SaliencyCpu, SomeCasesSpanSeveralKeyRanges) {
  int several = 0;
  for (const Case& c : kCases) {
    obc::SaliencyParams p;
    p.B = c.B, p.Hkv = c.H, p.G = c.G, p.W = c.W, p.N = c.N, p.D = c.D;
    several += obc::saliency_cpu_ranges(p) > 1;
  }
  EXPECT_EQ(several, 2);
}

TEST(SaliencyCpu, Float32MatchesNaive) {
  std::mt19937 rng(1);
  for (const Case& c : kCases) check_case<float, float>(c, obc::DType::F32, 2e-5, rng);
}

TEST(SaliencyCpu, Float64MatchesNaive) {
  std::mt19937 rng(2);
  for (const Case& c : kCases) check_case<double, double>(c, obc::DType::F64, 1e-12, rng);
}

TEST(SaliencyCpu, Float16MatchesNaiveOnExactInputs) {
  std::mt19937 rng(3);
  for (const Case& c : kCases) check_case<obc::half_t, float>(c, obc::DType::F16, 2e-5, rng);
}

TEST(SaliencyCpu, BFloat16MatchesNaiveOnExactInputs) {
  std::mt19937 rng(4);
  for (const Case& c : kCases) check_case<obc::bf16_t, float>(c, obc::DType::BF16, 2e-5, rng);
}

// bfloat16 at the shapes of the AVX512-BF16 pair path (cpu_tiles.h; picked
// by default on AMD CPUs with it, by OBCACHE_CPU_VARIANT=avx512bf16 on any):
// D a multiple of 32 over whole tiles (the 16 x 16 word transposes), with
// several key ranges too, causal or not; an odd row stride and D = 20
// (scalar pair loads); D = 48 (8 x 8 word transposes). (kCases' odd D take
// the float path.) The last three have G W >= 32 rows and D a multiple of
// 32, so the amx variant (cpu_amx.h) takes their products to AMX's tiles:
// 32 rows over several key ranges, causal; 36 rows (32 on AMX, 4 on the
// pair path) with an odd row stride; 64 rows at D = 128; 80 rows (64 on
// AMX) of a causal window longer than two key tiles, whose first row blocks
// see none of its last tiles (no P terms of an earlier tile may stay).
TEST(SaliencyCpu, BFloat16PairShapesMatchNaive) {
  std::mt19937 rng(7);
  const Case cases[] = {{1, 2, 2, 8, 100, 64, 0, true},   {1, 1, 3, 4, 600, 32, 0, false},
                        {1, 1, 2, 3, 40, 32, 1, true},    {1, 1, 2, 3, 70, 48, 0, true},
                        {1, 1, 2, 3, 70, 20, 0, true},    {1, 1, 2, 4, 1100, 32, 0, true},
                        {1, 2, 4, 8, 1100, 64, 0, true},  {1, 1, 3, 12, 200, 32, 1, false},
                        {1, 1, 4, 16, 300, 128, 0, false}, {1, 1, 2, 40, 150, 32, 0, true}};
  for (const Case& c : cases) check_case<obc::bf16_t, float>(c, obc::DType::BF16, 2e-5, rng);
}

// Where ||v||^2 - 2 v . o + ||o||^2 cancels (every v within 1/16 of 1, so
// the key score is ~1/800 of ||v||^2), float32 itself is off by up to
// ~8e-3 of the largest score, by its summation order (D = 128: the
// baseline variant 7.6e-3, avx512 4.8e-3; D = 64, avx512: 1.0e-3), as in
// the tensor cores' test (test_emu_saliency). The amx variant multiplies O
// as three bfloat16 terms (cpu_amx.h): 2.1e-3 and 1.6e-3; with two, 3.9e-3
// and 3.3e-3; with one (O rounded to bfloat16), 180%.
TEST(SaliencyCpu, BFloat16KeepsOAtFloatPrecisionWhereVMinusOCancels) {
  std::mt19937 rng(21);
  for (const Case& c : {Case{1, 1, 4, 8, 300, 128, 0, true}, Case{1, 2, 2, 16, 150, 64, 0, false}}) {
    Data d = make(c, rng);
    for (float& x : d.v) x = obc::bf16_bits_to_float(obc::bf16_rn(1.0f + x / 32));
    const std::vector<obc::bf16_t> k = convert<obc::bf16_t>(d.k), v = convert<obc::bf16_t>(d.v),
                                   q = convert<obc::bf16_t>(d.q);
    for (Score s : {Score::Key, Score::Joint}) {
      obc::SaliencyParams p = params(c, d, k.data(), v.data(), q.data(), obc::DType::BF16, s, 0.25f);
      const std::vector<double> want = naive_of(p, d, 0.25);
      double mag = 0;
      for (double w : want) mag = std::max(mag, std::fabs(w));
      std::vector<float> got(want.size(), -12345.0f);
      p.out = got.data();
      std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / sizeof(double) + 8);
      obc::saliency_cpu(p, 0, c.B * c.H, ws.data());
      double err = 0;
      for (size_t i = 0; i < want.size(); ++i) err = std::max(err, std::fabs(got[i] - want[i]) / mag);
      EXPECT_LT(err, 1e-2) << "D=" << c.D << " score " << static_cast<int>(s);
    }
  }
}

// Logits that overflow float unscaled but not scaled (|q . k| = 4e38,
// scale 1/8): finite as on the float path, where scale * q comes first. The
// pair path puts the scale's power of two on the queries for this; scaling
// the products afterwards made them Inf and every score NaN.
// The second case has 32 window rows: AMX's tiles under the amx variant.
TEST(SaliencyCpu, BFloat16LogitsOverflowOnlyWhereScaledOnesDo) {
  for (const Case& c : {Case{1, 1, 2, 4, 64, 64, 0, false}, Case{1, 1, 4, 8, 64, 64, 0, false}}) {
    std::mt19937 rng(8);
    const Data d = make(c, rng);
    std::vector<obc::bf16_t> k(d.k.size(), naive::from_float<obc::bf16_t>(2.5e18f)), v = convert<obc::bf16_t>(d.v),
                             q(d.q.size(), naive::from_float<obc::bf16_t>(2.5e18f));
    obc::SaliencyParams p = params(c, d, k.data(), v.data(), q.data(), obc::DType::BF16, Score::Attn, 0.125f);
    std::vector<float> out(c.N, -1.0f);
    p.out = out.data();
    std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / sizeof(double) + 8);
    obc::saliency_cpu(p, 0, 1, ws.data());
    // Equal logits: A = 1 / N for each of the G * W window rows.
    const float want = static_cast<float>(c.G * c.W) / static_cast<float>(c.N);
    for (int64_t n = 0; n < c.N; ++n) ASSERT_FLOAT_EQ(out[n], want) << "key " << n << ", G W = " << c.G * c.W;
  }
}

TEST(SaliencyCpu, WorkspaceIsBoundedWhateverN) {
  obc::SaliencyParams p;
  p.B = 1, p.Hkv = 8, p.G = 4, p.W = 32, p.D = 128;
  // Beside the logit cache: O(G * W * D), a fixed multiple of the queries
  // (the queries, O and the merged O, three key tiles: 3.8 times the
  // queries' bytes here; bfloat16 adds the AMX path's buffers, O's and a
  // key tile's P's three bfloat16 terms and a key tile's logits and v.o of
  // every row: 6.3). The cache holds one tile's logits at N = 1, and at
  // most 16 MiB.
  const size_t one_tile = 4 * 32 * 32 * 4, cache = size_t(16) << 20;
  for (auto [dt, times] : {std::pair{obc::DType::F32, 4}, std::pair{obc::DType::BF16, 7}}) {
    p.dtype = dt, p.N = 1;
    const size_t fixed = obc::saliency_cpu_workspace_bytes(p) - one_tile;
    EXPECT_LT(fixed, size_t(times) * 4 * 32 * 128 * 4);
    for (int64_t n = 1; n <= (int64_t(1) << 22); n *= 2) {
      p.N = n;
      const size_t want = fixed + std::min(cache, static_cast<size_t>((n + 31) / 32) * one_tile);
      EXPECT_EQ(obc::saliency_cpu_workspace_bytes(p), want) << "N=" << n;
    }
  }
}

// R * N * 4 bytes of logits above the 16 MiB cache: pass 2 reads back the
// first 32,768 keys' logits and recomputes Q K^T for the rest.
TEST(SaliencyCpu, LongRowsPastTheLogitCacheMatchNaive) {
  std::mt19937 rng(5);
  // D = 32: bfloat16 on the pair path's fast transposes; 128 rows: AMX under the amx variant
  const Case c{1, 1, 4, 32, 33000, 32, 0, true};
  const Data d = make(c, rng);
  const std::vector<obc::bf16_t> k = convert<obc::bf16_t>(d.k), v = convert<obc::bf16_t>(d.v),
                                 q = convert<obc::bf16_t>(d.q);
  for (Score s : {Score::Attn, Score::Joint, Score::Loo}) for (obc::DType dt : {obc::DType::F32, obc::DType::BF16}) {
    const bool bf = dt == obc::DType::BF16;
    obc::SaliencyParams p = bf ? params(c, d, k.data(), v.data(), q.data(), dt, s, 0.25f)
                               : params(c, d, d.k.data(), d.v.data(), d.q.data(), dt, s, 0.25f);
    ASSERT_LT(obc::saliency_cpu_workspace_bytes(p), (size_t(16) << 20) + (size_t(1) << 20));  // 32,768 keys cached
    const std::vector<double> want = naive_of(p, d, 0.25);
    std::vector<float> got(want.size(), -12345.0f);
    p.out = got.data();
    std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / sizeof(double) + 8);
    obc::saliency_cpu(p, 0, 1, ws.data());
    double mag = 0;
    for (double w : want) mag = std::max(mag, std::fabs(w));
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_NEAR(static_cast<double>(got[i]), want[i], 2e-5 * std::max(mag, 1e-30))
          << "score=" << static_cast<int>(s) << " bf16=" << bf << " at " << i;
  }
}

// Rows of several key ranges (saliency_cpu.h): pass 1 range by range with
// the states merged, within float tolerance of the naive statement; and the
// split form, whatever the pass-2 chunks, bitwise the same as whole rows.
TEST(SaliencyCpu, RowsOfSeveralKeyRangesSplitOrNotGiveTheSameBits) {
  std::mt19937 rng(6);
  const int64_t R = obc::kSaliencyMinRangeKeys, M = obc::kSaliencyMaxRanges;
  // The last: ranges of 2 R keys (M R < N), 9 of them.
  for (const Case& c : {Case{1, 2, 2, 5, 2 * R + 77, 8, 1, true}, Case{2, 1, 3, 4, R + 1, 6, 0, false},
                        Case{1, 1, 2, 3, M * R + 100, 4, 0, true}}) {
    const Data d = make(c, rng);
    for (int s = 0; s < 7; ++s) {
      obc::SaliencyParams p =
          params(c, d, d.k.data(), d.v.data(), d.q.data(), obc::DType::F32, static_cast<Score>(s), 0.25f);
      const std::vector<double> want = naive_of(p, d, 0.25);
      std::vector<float> whole(want.size(), -12345.0f);
      p.out = whole.data();
      std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / sizeof(double) + 8);
      obc::saliency_cpu(p, 0, c.B * c.H, ws.data());
      double mag = 0;
      for (double w : want) mag = std::max(mag, std::fabs(w));
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(static_cast<double>(whole[i]), want[i], 2e-5 * std::max(mag, 1e-30))
            << "score=" << s << " N=" << c.N << " at " << i;
      const int64_t S = obc::saliency_cpu_ranges(p);
      ASSERT_GT(S, 1);
      for (int64_t chunk : {int64_t(1), int64_t(2), S})
        for (bool keep_logits : {false, true}) {
          std::vector<float> split(want.size(), -12345.0f);
          p.out = split.data();
          run_split(p, chunk, keep_logits);
          ASSERT_EQ(0, std::memcmp(split.data(), whole.data(), whole.size() * sizeof(float)))
              << "score=" << s << " N=" << c.N << " chunk=" << chunk << " keep_logits=" << keep_logits;
        }
    }
  }
}

// Ranges of 512 keys up to 16 ranges, then whole multiples of 512 keys
// that keep them at most 16; never a partial tile.
TEST(SaliencyCpu, KeyRangesDependOnNAloneAndStayAtMostSixteen) {
  obc::SaliencyParams p;
  const std::pair<int64_t, int64_t> want[] = {{1, 512},       {512, 512},   {2048, 512},  {8192, 512},
                                              {8193, 1024},   {16384, 1024}, {16385, 1536}, {131072, 8192},
                                              {131073, 8704}};
  for (const auto& [n, keys] : want) {
    p.N = n;
    EXPECT_EQ(obc::saliency_cpu_range_keys(p), keys) << "N=" << n;
    EXPECT_LE(obc::saliency_cpu_ranges(p), obc::kSaliencyMaxRanges) << "N=" << n;
    EXPECT_EQ(obc::saliency_cpu_range_keys(p) % obc::kTile, 0) << "N=" << n;
  }
}

// Sets OBCACHE_CPU_VARIANT for a scope and restores what the process had
// (CMakeLists.txt's per-variant runs set it), also when a check fails.
class ScopedVariantEnv {
 public:
  ScopedVariantEnv() : had_(std::getenv("OBCACHE_CPU_VARIANT") != nullptr) {
    if (had_) saved_ = std::getenv("OBCACHE_CPU_VARIANT");
  }
  ~ScopedVariantEnv() {
    if (had_)
      setenv("OBCACHE_CPU_VARIANT", saved_.c_str(), 1);
    else
      unsetenv("OBCACHE_CPU_VARIANT");
  }
  void set(const char* variant) { EXPECT_EQ(0, setenv("OBCACHE_CPU_VARIANT", variant, 1)); }
  void unset() { unsetenv("OBCACHE_CPU_VARIANT"); }

 private:
  bool had_;
  std::string saved_;
};

// Each value, set here: the pick is the lower of it and what the CPU
// supports (a value above that changes nothing: a build with the baseline
// only, sanitizers', picks it under every value), so avx512bf16 picks the
// pair variant also where the default leaves it out (Intel); an unknown or
// empty value gives the default.
TEST(CpuVariant, TheEnvironmentPicksUpToWhatTheCpuSupports) {
  ScopedVariantEnv env;
  env.unset();
  const obc::CpuVariant can = obc::cpu_supported_variant(), fallback = obc::cpu_default_variant();
  EXPECT_EQ(static_cast<int>(obc::cpu_variant()), static_cast<int>(fallback));
  EXPECT_LE(static_cast<int>(fallback), static_cast<int>(can));
#ifndef OBC_X86_VARIANTS
  EXPECT_EQ(static_cast<int>(can), static_cast<int>(obc::CpuVariant::Baseline));
#endif
  const std::pair<const char*, obc::CpuVariant> picks[] = {{"baseline", obc::CpuVariant::Baseline},
                                                          {"avx2", obc::CpuVariant::Avx2},
                                                          {"avx512", obc::CpuVariant::Avx512},
                                                          {"avx512bf16", obc::CpuVariant::Avx512Bf16},
                                                          {"amx", obc::CpuVariant::Amx}};
  for (const auto& [value, want] : picks) {
    env.set(value);
    EXPECT_EQ(static_cast<int>(obc::cpu_variant()), static_cast<int>(std::min(want, can))) << "value=" << value;
  }
  for (const char* ignored : {"", "sse9"}) {
    env.set(ignored);
    EXPECT_EQ(static_cast<int>(obc::cpu_variant()), static_cast<int>(fallback)) << "value=" << ignored;
  }
}

#ifdef OBC_X86_VARIANTS
// The picks against the kernel's own reading of /proc/cpuinfo: the AVX-512
// variants exactly when it lists x86-64-v4's AVX-512 subsets, the pair
// variant supported when it lists avx512_bf16 too, AMX when it lists
// amx_tile and amx_bf16 as well and Linux grants the tiles; the default is
// the best supported but on Intel (GenuineIntel) without AMX, whose pair dot
// products run at half the float rate.
TEST(CpuVariant, ThePicksFollowTheCpuFlagsAndVendor) {
  std::ifstream info("/proc/cpuinfo");
  std::string line, flags, vendor;
  while (std::getline(info, line) && (flags.empty() || vendor.empty())) {
    if (flags.empty() && line.rfind("flags", 0) == 0) flags = line + " ";
    if (vendor.empty() && line.rfind("vendor_id", 0) == 0) vendor = line;
  }
  if (flags.empty() || vendor.empty()) GTEST_SKIP() << "no flags or vendor_id line in /proc/cpuinfo";
  auto has = [&](const char* f) { return flags.find(std::string(" ") + f + " ") != std::string::npos; };
  const bool v4 = has("avx512f") && has("avx512bw") && has("avx512cd") && has("avx512dq") && has("avx512vl");
  const bool intel = vendor.find("GenuineIntel") != std::string::npos;
  const bool amx = has("amx_tile") && has("amx_bf16") && obc::amx_granted();
  ScopedVariantEnv env;
  env.unset();
  const int can = static_cast<int>(obc::cpu_supported_variant()), got = static_cast<int>(obc::cpu_variant());
  if (v4) {
    const auto best = !has("avx512_bf16") ? obc::CpuVariant::Avx512
                      : amx               ? obc::CpuVariant::Amx
                                          : obc::CpuVariant::Avx512Bf16;
    EXPECT_EQ(can, static_cast<int>(best)) << flags;
    const bool pairs_only = best == obc::CpuVariant::Avx512Bf16;
    EXPECT_EQ(got, static_cast<int>(intel && pairs_only ? obc::CpuVariant::Avx512 : best)) << vendor;
  } else {
    EXPECT_LT(can, static_cast<int>(obc::CpuVariant::Avx512)) << flags;
    EXPECT_EQ(got, can) << flags;
  }
}
#endif

TEST(SaliencyCpu, MaskedPairsContributeZeroSoTheFirstKeyOfACausalWindowSeesAll) {
  // N = W = 2, causal: query 0 sees key 0 only; key 1's attn is query 1's A.
  std::vector<float> k = {1, 0}, v = {1, 1}, q = {0, 0};  // D = 1, q = 0 -> uniform
  std::vector<float> out(2);
  obc::SaliencyParams p;
  p.k = k.data(), p.v = v.data(), p.q = q.data(), p.out = out.data();
  p.B = p.Hkv = p.G = 1, p.W = 2, p.N = 2, p.D = 1;
  p.k_sn = p.v_sn = p.q_sw = 1, p.k_sh = p.v_sh = p.k_sb = p.v_sb = 2, p.q_sh = p.q_sb = 2;
  p.score = Score::Attn;
  std::vector<double> ws(obc::saliency_cpu_workspace_bytes(p) / 8 + 8);
  obc::saliency_cpu(p, 0, 1, ws.data());
  EXPECT_FLOAT_EQ(out[0], 1.5f);  // 1 (query 0) + 0.5 (query 1)
  EXPECT_FLOAT_EQ(out[1], 0.5f);
}

}  // namespace
