// Metal twin of src/cuda/topk.cu (same algorithm, same packed output; see that file and
// cpu.rs for the numerics and the ordering rule). One threadgroup of TTK_THREADS threads
// per row; reductions go through threadgroup memory (a tree), so nothing depends on the
// SIMD width. Apple GPUs have no double precision: the normaliser's partial sums and the
// probabilities are evaluated in float here, so values agree with the CPU to ~1e-6
// relative rather than to the last bit (ids and order are exact).

#include <metal_stdlib>
using namespace metal;

#define TTK_THREADS 512
#define TTK_MAX_K 64
#define TTK_MAGIC 0x314b5454u
#define TTK_FLAG_NONFINITE 1u

struct Entry {
  float v;
  uint id;
  int valid;
};

static inline bool ttk_before(Entry a, Entry b) {
  if (a.valid != b.valid) return a.valid > b.valid;
  if (!a.valid) return false;
  if (a.v != b.v) return a.v > b.v;
  return a.id < b.id;
}

static inline void ttk_merge(thread float& m, thread float& s, float m2, float s2, float inv_t,
                             bool greedy) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) { m = m2; s = s2; return; }
  if (greedy) {
    if (m2 > m) { m = m2; s = s2; } else if (m2 == m) { s += s2; }
    return;
  }
  if (m2 > m) { s = s * exp((m - m2) * inv_t) + s2; m = m2; }
  else { s += s2 * exp((m2 - m) * inv_t); }
}

static inline float ttk_prob(float l, float max_logit, float log_z, float temperature) {
  if (temperature == 0.0f) return l == max_logit ? exp(-log_z) : 0.0f;
  return exp((l - max_logit) / temperature - log_z);
}

template <typename T>
static void ttk_softmax_topk(device const T* logits, constant uint& n, constant float& temperature,
                             uint k, device const uchar* mask, constant uint& mask_len,
                             constant int& has_mask, device uint* out, uint tid,
                             threadgroup float* sh_m, threadgroup float* sh_s,
                             threadgroup int* sh_bad, threadgroup Entry* sh_e,
                             threadgroup int* sh_owner) {
  if (k > TTK_MAX_K) k = TTK_MAX_K;
  const bool greedy = temperature == 0.0f;
  const float inv_t = greedy ? 0.0f : 1.0f / temperature;
  float lv[TTK_MAX_K];
  uint li[TTK_MAX_K];
  uint len = 0;
  float floor_v = -INFINITY;
  float m = -INFINITY;
  float s = 0.0f;
  int bad = 0;
  for (uint i = tid; i < n; i += TTK_THREADS) {
    const float l = float(logits[i]);
    if (isnan(l) || l == INFINITY) { bad = 1; continue; }
    if (greedy) {
      if (l > m) { m = l; s = 1.0f; } else if (l == m && l != -INFINITY) { s += 1.0f; }
    } else if (l != -INFINITY) {
      if (l > m) { s = (m == -INFINITY) ? 0.0f : s * exp((m - l) * inv_t); m = l; }
      s += exp((l - m) * inv_t);
    }
    if (len == k && l <= floor_v) continue;
    if (has_mask != 0 && (i >= mask_len || mask[i] == 0)) continue;
    uint pos = len < k ? len : k - 1;
    if (len < k) len++;
    while (pos > 0 && lv[pos - 1] < l) { lv[pos] = lv[pos - 1]; li[pos] = li[pos - 1]; pos--; }
    lv[pos] = l;
    li[pos] = i;
    if (len == k) floor_v = lv[k - 1];
  }
  sh_m[tid] = m;
  sh_s[tid] = s;
  sh_bad[tid] = bad;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint w = TTK_THREADS / 2; w > 0; w >>= 1) {
    if (tid < w) {
      float mm = sh_m[tid];
      float ss = sh_s[tid];
      ttk_merge(mm, ss, sh_m[tid + w], sh_s[tid + w], inv_t, greedy);
      sh_m[tid] = mm;
      sh_s[tid] = ss;
      sh_bad[tid] |= sh_bad[tid + w];
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  const float max_logit = sh_m[0];
  const float total = sh_s[0];
  const int flag = (sh_bad[0] != 0 || max_logit == -INFINITY || !(total > 0.0f)) ? 1 : 0;
  const float log_z = flag ? 0.0f : log(total);
  const float temp_out = greedy ? 0.0f : temperature;
  threadgroup_barrier(mem_flags::mem_threadgroup);

  device float* probs = (device float*)(out + 8);
  device uint* ids = out + 8 + k;
  uint head = 0;
  uint count = 0;
  if (flag == 0) {
    for (uint r = 0; r < k; r++) {
      Entry e;
      e.valid = head < len ? 1 : 0;
      e.v = e.valid ? lv[head] : -INFINITY;
      e.id = e.valid ? li[head] : 0xffffffffu;
      sh_e[tid] = e;
      sh_owner[tid] = int(tid);
      threadgroup_barrier(mem_flags::mem_threadgroup);
      for (uint w = TTK_THREADS / 2; w > 0; w >>= 1) {
        if (tid < w && ttk_before(sh_e[tid + w], sh_e[tid])) {
          sh_e[tid] = sh_e[tid + w];
          sh_owner[tid] = sh_owner[tid + w];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
      }
      const Entry best = sh_e[0];
      const int owner = sh_owner[0];
      if (!best.valid) break;  // uniform: every thread read the same sh_e[0]
      if (tid == 0) {
        probs[r] = ttk_prob(best.v, max_logit, log_z, temp_out);
        ids[r] = best.id;
      }
      if (int(tid) == owner) head++;
      count++;
      threadgroup_barrier(mem_flags::mem_threadgroup);
    }
  }
  if (tid == 0) {
    out[0] = TTK_MAGIC;
    out[1] = k;
    out[2] = count;
    out[3] = as_type<uint>(temp_out);
    out[4] = as_type<uint>(max_logit);
    out[5] = as_type<uint>(log_z);
    out[6] = flag ? TTK_FLAG_NONFINITE : 0u;
    out[7] = 0u;
  }
  for (uint r = count + tid; r < k; r += TTK_THREADS) {
    probs[r] = 0.0f;
    ids[r] = 0xffffffffu;
  }
}

#define TTK_INSTANTIATE(SUFFIX, T)                                                            \
  kernel void tutti_softmax_topk_##SUFFIX(                                                    \
      device const T* logits [[buffer(0)]], constant uint& n [[buffer(1)]],                   \
      constant float& temperature [[buffer(2)]], constant uint& k [[buffer(3)]],              \
      device const uchar* mask [[buffer(4)]], constant uint& mask_len [[buffer(5)]],          \
      constant int& has_mask [[buffer(6)]], device uint* out [[buffer(7)]],                   \
      uint tid [[thread_position_in_threadgroup]]) {                                          \
    threadgroup float sh_m[TTK_THREADS];                                                      \
    threadgroup float sh_s[TTK_THREADS];                                                      \
    threadgroup int sh_bad[TTK_THREADS];                                                      \
    threadgroup Entry sh_e[TTK_THREADS];                                                      \
    threadgroup int sh_owner[TTK_THREADS];                                                    \
    ttk_softmax_topk<T>(logits, n, temperature, k, mask, mask_len, has_mask, out, tid, sh_m,  \
                        sh_s, sh_bad, sh_e, sh_owner);                                        \
  }                                                                                           \
  kernel void tutti_gather_probs_##SUFFIX(                                                    \
      device const T* logits [[buffer(0)]], constant uint& n [[buffer(1)]],                   \
      device const uint* ids [[buffer(2)]], constant uint& n_ids [[buffer(3)]],               \
      constant float& temperature [[buffer(4)]], constant float& max_logit [[buffer(5)]],     \
      constant float& log_z [[buffer(6)]], device float* out [[buffer(7)]],                   \
      uint i [[thread_position_in_grid]]) {                                                   \
    if (i >= n_ids) return;                                                                   \
    uint id = ids[i];                                                                         \
    out[i] = id < n ? ttk_prob(float(logits[id]), max_logit, log_z, temperature) : 0.0f;      \
  }

TTK_INSTANTIATE(f32, float)
TTK_INSTANTIATE(bf16, bfloat)
TTK_INSTANTIATE(f16, half)
