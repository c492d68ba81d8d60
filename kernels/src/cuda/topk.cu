// Fused softmax-with-temperature + top-k over one logits row, and the gather of the
// probabilities of given ids under the resulting normaliser. The device twin of
// `tutti_kernels::cpu` (see cpu.rs for the numerics and the ordering rule):
//
//  * order: higher logit first, equal logits by lower id; NaN logits are never selected;
//    -inf logits can be, when fewer than k others are allowed;
//  * the mask (optional) restricts the selection only; the normaliser covers every id;
//  * temperature 0 is the greedy limit: log_z = ln(number of ids holding the maximum);
//  * a row holding NaN or +inf, or only -inf, has no distribution: the header's
//    reserved[0] is set to 1 (the host reports KernelError::NonFinite) and count is 0;
//  * probabilities are exp((l - max) / T - log_z) evaluated in double, as on the CPU.
//
// One thread block per row (the step has one row per member). Each thread scans a strided
// slice of the row once, keeping an online (max, sum of exponentials) pair and its own
// sorted top-k list; the block then reduces the pairs and merges the per-thread lists in
// k rounds of a block-wide arg-max. Output: the packed layout of wire.rs.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define TTK_THREADS 512
#define TTK_WARPS (TTK_THREADS / 32)
#define TTK_MAX_K 64
#define TTK_MAGIC 0x314b5454u  // "TTK1" little-endian
#define TTK_FLAG_NONFINITE 1u

__device__ __forceinline__ float ttk_load(const float* p, uint32_t i) { return p[i]; }
__device__ __forceinline__ float ttk_load(const __nv_bfloat16* p, uint32_t i) {
  return __bfloat162float(p[i]);
}
__device__ __forceinline__ float ttk_load(const __half* p, uint32_t i) { return __half2float(p[i]); }

// (value, id) ordering: true when a ranks before b. Invalid entries rank last.
struct Entry {
  float v;
  uint32_t id;
  int valid;
};

__device__ __forceinline__ bool ttk_before(const Entry& a, const Entry& b) {
  if (a.valid != b.valid) return a.valid > b.valid;
  if (!a.valid) return false;
  if (a.v != b.v) return a.v > b.v;
  return a.id < b.id;
}

__device__ __forceinline__ Entry ttk_shfl(const Entry& e, int offset) {
  Entry o;
  o.v = __shfl_down_sync(0xffffffffu, e.v, offset);
  o.id = __shfl_down_sync(0xffffffffu, e.id, offset);
  o.valid = __shfl_down_sync(0xffffffffu, e.valid, offset);
  return o;
}

// Online (max, sum) merge: sum is relative to max. Greedy (inv_t == 0): sum counts maxima.
__device__ __forceinline__ void ttk_merge(float& m, double& s, float m2, double s2, double inv_t,
                                          bool greedy) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  if (greedy) {
    if (m2 > m) {
      m = m2;
      s = s2;
    } else if (m2 == m) {
      s += s2;
    }
    return;
  }
  if (m2 > m) {
    s = s * exp(((double)m - (double)m2) * inv_t) + s2;
    m = m2;
  } else {
    s += s2 * exp(((double)m2 - (double)m) * inv_t);
  }
}

__device__ __forceinline__ float ttk_prob(float l, float max_logit, float log_z, float temperature) {
  if (temperature == 0.0f) {
    return l == max_logit ? (float)exp(-(double)log_z) : 0.0f;
  }
  double x = ((double)l - (double)max_logit) / (double)temperature;
  return (float)exp(x - (double)log_z);
}

template <typename T>
__device__ void ttk_softmax_topk(const T* __restrict__ logits, uint32_t n, float temperature,
                                 uint32_t k, const uint8_t* __restrict__ mask, uint32_t mask_len,
                                 int has_mask, uint32_t* __restrict__ out) {
  __shared__ float sh_m[TTK_WARPS];
  __shared__ double sh_s[TTK_WARPS];
  __shared__ int sh_bad[TTK_WARPS];
  __shared__ Entry sh_e[TTK_WARPS];
  __shared__ int sh_owner[TTK_WARPS];
  __shared__ int sh_winner;
  __shared__ float sh_max;
  __shared__ float sh_logz;
  __shared__ int sh_flag;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  if (k > TTK_MAX_K) k = TTK_MAX_K;  // the host never asks for more
  const bool greedy = temperature == 0.0f;
  const float inv_t = greedy ? 0.0f : 1.0f / temperature;
  const double inv_t64 = greedy ? 0.0 : 1.0 / (double)temperature;

  // Pass: online max/sum and a sorted per-thread top-k list.
  float lv[TTK_MAX_K];
  uint32_t li[TTK_MAX_K];
  uint32_t len = 0;
  float floor_v = -INFINITY;  // k-th best once the list is full
  float m = -INFINITY;
  double s = 0.0;             // relative to m; a count of maxima when greedy
  int bad = 0;                // NaN or +inf seen
  for (uint32_t i = tid; i < n; i += TTK_THREADS) {
    const float l = ttk_load(logits, i);
    if (isnan(l) || l == INFINITY) {
      bad = 1;
      continue;
    }
    // Normaliser.
    if (greedy) {
      if (l > m) {
        m = l;
        s = 1.0;
      } else if (l == m && l != -INFINITY) {
        s += 1.0;
      }
    } else if (l != -INFINITY) {
      if (l > m) {
        s = (m == -INFINITY) ? 0.0 : s * (double)__expf((m - l) * inv_t);
        m = l;
      }
      s += (double)__expf((l - m) * inv_t);
    }
    // Selection: ids ascend within a thread, so an equal logit never displaces an entry.
    if (len == k && l <= floor_v) continue;
    if (has_mask && (i >= mask_len || mask[i] == 0)) continue;
    uint32_t pos = len < k ? len : k - 1;
    if (len < k) len++;
    while (pos > 0 && lv[pos - 1] < l) {
      lv[pos] = lv[pos - 1];
      li[pos] = li[pos - 1];
      pos--;
    }
    lv[pos] = l;
    li[pos] = i;
    if (len == k) floor_v = lv[k - 1];
  }

  // Block reduction of (max, sum, bad).
  double sd = s;
  for (int off = 16; off > 0; off >>= 1) {
    float m2 = __shfl_down_sync(0xffffffffu, m, off);
    double s2 = __shfl_down_sync(0xffffffffu, sd, off);
    int b2 = __shfl_down_sync(0xffffffffu, bad, off);
    ttk_merge(m, sd, m2, s2, inv_t64, greedy);
    bad |= b2;
  }
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = sd;
    sh_bad[warp] = bad;
  }
  __syncthreads();
  if (tid == 0) {
    float bm = -INFINITY;
    double bs = 0.0;
    int bb = 0;
    for (int w = 0; w < TTK_WARPS; w++) {
      ttk_merge(bm, bs, sh_m[w], sh_s[w], inv_t64, greedy);
      bb |= sh_bad[w];
    }
    int flag = (bb || bm == -INFINITY || !(bs > 0.0)) ? 1 : 0;
    sh_flag = flag;
    sh_max = bm;
    sh_logz = flag ? 0.0f : (float)log(bs);
  }
  __syncthreads();
  const int flag = sh_flag;
  const float max_logit = sh_max;
  const float log_z = sh_logz;
  const float temp_out = greedy ? 0.0f : temperature;

  float* probs = reinterpret_cast<float*>(out + 8);
  uint32_t* ids = out + 8 + k;

  // Merge: k rounds of a block-wide arg-max over each thread's next entry.
  uint32_t head = 0;
  uint32_t count = 0;
  if (!flag) {
    for (uint32_t r = 0; r < k; r++) {
      Entry e;
      e.valid = head < len;
      e.v = e.valid ? lv[head] : -INFINITY;
      e.id = e.valid ? li[head] : 0xffffffffu;
      Entry best = e;
      int owner = tid;
      for (int off = 16; off > 0; off >>= 1) {
        Entry o = ttk_shfl(best, off);
        int oo = __shfl_down_sync(0xffffffffu, owner, off);
        if (ttk_before(o, best)) {
          best = o;
          owner = oo;
        }
      }
      if (lane == 0) {
        sh_e[warp] = best;
        sh_owner[warp] = owner;
      }
      __syncthreads();
      if (tid == 0) {
        Entry b = sh_e[0];
        int ow = sh_owner[0];
        for (int w = 1; w < TTK_WARPS; w++) {
          if (ttk_before(sh_e[w], b)) {
            b = sh_e[w];
            ow = sh_owner[w];
          }
        }
        if (b.valid) {
          probs[r] = ttk_prob(b.v, max_logit, log_z, temp_out);
          ids[r] = b.id;
          sh_winner = ow;
        } else {
          sh_winner = -1;
        }
      }
      __syncthreads();
      const int winner = sh_winner;
      __syncthreads();  // sh_e / sh_winner are rewritten next round
      if (winner < 0) break;
      if (winner == tid) head++;
      count++;
    }
  }

  if (tid == 0) {
    out[0] = TTK_MAGIC;
    out[1] = k;
    out[2] = count;
    out[3] = __float_as_uint(temp_out);
    out[4] = __float_as_uint(max_logit);
    out[5] = __float_as_uint(log_z);
    out[6] = flag ? TTK_FLAG_NONFINITE : 0u;
    out[7] = 0u;
  }
  // Unused slots: probability 0, id u32::MAX (as TopK::to_packed writes them).
  for (uint32_t r = count + tid; r < k; r += TTK_THREADS) {
    probs[r] = 0.0f;
    ids[r] = 0xffffffffu;
  }
}

template <typename T>
__device__ void ttk_gather(const T* __restrict__ logits, uint32_t n, const uint32_t* __restrict__ ids,
                           uint32_t n_ids, float temperature, float max_logit, float log_z,
                           float* __restrict__ out) {
  uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n_ids) return;
  uint32_t id = ids[i];
  out[i] = id < n ? ttk_prob(ttk_load(logits, id), max_logit, log_z, temperature) : 0.0f;
}

#define TTK_INSTANTIATE(SUFFIX, T)                                                              \
  extern "C" __global__ void __launch_bounds__(TTK_THREADS)                                    \
      tutti_softmax_topk_##SUFFIX(const T* logits, uint32_t n, float temperature, uint32_t k,  \
                                  const uint8_t* mask, uint32_t mask_len, int has_mask,        \
                                  uint32_t* out) {                                             \
    ttk_softmax_topk<T>(logits, n, temperature, k, mask, mask_len, has_mask, out);             \
  }                                                                                            \
  extern "C" __global__ void tutti_gather_probs_##SUFFIX(                                      \
      const T* logits, uint32_t n, const uint32_t* ids, uint32_t n_ids, float temperature,     \
      float max_logit, float log_z, float* out) {                                              \
    ttk_gather<T>(logits, n, ids, n_ids, temperature, max_logit, log_z, out);                  \
  }

TTK_INSTANTIATE(f32, float)
TTK_INSTANTIATE(bf16, __nv_bfloat16)
TTK_INSTANTIATE(f16, __half)
