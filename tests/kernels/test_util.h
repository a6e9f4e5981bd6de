// test_util.h — shared helpers for the kernel tests: seeded random data, error measures,
// storage-type conversions, and central finite differences of a double-precision function.
#pragma once

#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

#include "runtime/dtype.h"

namespace shardtrain::testing {

inline std::vector<float> random_vector(int64_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

template <class T>
std::vector<T> to_storage(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = from_float<T>(v[i]);
  return out;
}

template <class T>
std::vector<float> to_f32(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = to_float(v[i]);
  return out;
}

template <class T>
std::vector<double> to_f64(const std::vector<T>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = double(to_float(v[i]));
  return out;
}

inline size_t usize(int64_t n) { return static_cast<size_t>(n); }

// Half an ulp of the storage type relative to the largest output: bf16 keeps 8 significant
// bits (2^-8), f16 11 (2^-11); fp32 storage adds no rounding beyond the arithmetic's own.
template <class T>
double rounding_of() {
  if constexpr (std::is_same_v<T, BFloat16>) return 1.0 / 256;
  if constexpr (std::is_same_v<T, Half>) return 1.0 / 2048;
  return 0.0;
}

// Bitwise equality of two vectors of trivially copyable values.
template <class V>
bool same_bits(const V& a, const V& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(typename V::value_type)) == 0;
}

// f() run with `threads` OpenMP threads, the previous setting restored after.
template <class F>
auto with_threads(int threads, F f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto result = f();
  omp_set_num_threads(saved);
  return result;
}

// max |got - want| / max(|want|_inf, floor): a relative error against the reference's scale,
// robust to individual near-zero entries. A NaN on one side only is an infinite error (a plain
// std::max would skip it: NaN compares false).
template <class A, class B>
double max_rel_error(const std::vector<A>& got, const std::vector<B>& want, double floor = 1e-6) {
  EXPECT_EQ(got.size(), want.size());
  double scale = floor, err = 0;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs(double(want[i])));
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = double(got[i]), w = double(want[i]);
    if (std::isnan(g) != std::isnan(w)) return INFINITY;
    if (!std::isnan(g)) err = std::max(err, std::fabs(g - w));
  }
  return err / scale;
}

// Central differences of f at x: d f / d x[i] for every i, in double precision. h = 1e-6 gives
// truncation error O(h^2 f''') and cancellation error O(eps_64 / h), both near 1e-10 relative.
inline std::vector<double> finite_difference(
    const std::function<double(const std::vector<double>&)>& f, std::vector<double> x,
    double h = 1e-6) {
  std::vector<double> grad(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    double saved = x[i];
    x[i] = saved + h;
    double up = f(x);
    x[i] = saved - h;
    double down = f(x);
    x[i] = saved;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

}  // namespace shardtrain::testing
