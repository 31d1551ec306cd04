#pragma once
// Channel-masked convolution as a composition of the platform's dense convolution (oneDNN on CPU,
// cuDNN on CUDA): for each task, gather the active input channels and the matching weight slice,
// convolve the compact problem, and write the active output channels into a zeroed output. Work is
// proportional to active inputs x active outputs per task. CPU and CUDA share this file; each
// chooses whether tasks run in parallel (TaskOrder) because the faster way differs between the two.
//
// Masks arrive normalised by flexops/ops/masked_conv2d.py: bool [Mi, Cin] and [Mo, Cout], each with
// one row shared by every task or one row per task. With M = max(Mi, Mo) > 1 there are M tasks and
// the input batch is 1 (shared by all tasks) or M (one sample per task); with M = 1 the whole batch
// is one task.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <vector>

#include "common/layout.h"

namespace flexops::masked {

enum class TaskOrder {
  kParallel,    // tasks spread over threads, each convolution single-threaded (one task: threaded)
  kSequential,  // one task after another, each convolution free to use the whole device
};

// One task's slice of the problem: the input samples and output rows it covers, and its channels.
struct Task {
  int64_t input_start, output_start, length;  // rows [start, start + length) of input and output
  at::Tensor in_channels, out_channels;       // int64 indices of the active channels
};

// Allocates the output: (sizes, options, memory format) -> uninitialised tensor; nullptr: at::empty.
using Allocate = at::Tensor (*)(at::IntArrayRef, const at::TensorOptions&, at::MemoryFormat);

inline int64_t num_tasks(const at::Tensor& input, const at::Tensor& in_mask, const at::Tensor& out_mask) {
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  return m == 1 ? input.size(0) : m;
}

inline void check(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& in_mask,
                  const at::Tensor& out_mask) {
  TORCH_CHECK(in_mask.scalar_type() == at::kBool && in_mask.dim() == 2 &&
                  in_mask.size(1) == input.size(1),
              "in_mask must be bool [M, Cin] with Cin = ", input.size(1), "; got ", in_mask.sizes());
  TORCH_CHECK(out_mask.scalar_type() == at::kBool && out_mask.dim() == 2 &&
                  out_mask.size(1) == weight.size(0),
              "out_mask must be bool [M, Cout] with Cout = ", weight.size(0), "; got ",
              out_mask.sizes());
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  TORCH_CHECK((in_mask.size(0) == 1 || in_mask.size(0) == m) &&
                  (out_mask.size(0) == 1 || out_mask.size(0) == m),
              "in_mask and out_mask must have 1 or the same number of rows; got ", in_mask.size(0),
              " and ", out_mask.size(0));
  TORCH_CHECK(m == 1 || input.size(0) == 1 || input.size(0) == m, "input batch must be 1 or ", m,
              " (the number of mask rows); got ", input.size(0));
}

inline std::vector<Task> tasks(const at::Tensor& input, const at::Tensor& in_mask,
                               const at::Tensor& out_mask) {
  const int64_t count = num_tasks(input, in_mask, out_mask);
  const bool whole_batch = std::max(in_mask.size(0), out_mask.size(0)) == 1;
  std::vector<Task> result;
  for (int64_t t = 0; t < (whole_batch ? 1 : count); ++t) {
    Task task;
    task.input_start = input.size(0) == 1 ? 0 : t;
    task.output_start = t;
    task.length = whole_batch ? count : 1;
    task.in_channels = in_mask[in_mask.size(0) == 1 ? 0 : t].nonzero().view(-1);
    task.out_channels = out_mask[out_mask.size(0) == 1 ? 0 : t].nonzero().view(-1);
    result.push_back(std::move(task));
  }
  return result;
}

// Slices of `t` along `dim` at the sorted `index`; `t` itself when index holds all of them, so
// full masks (every channel on) cost no copies.
inline at::Tensor select_channels(const at::Tensor& t, int64_t dim, const at::Tensor& index) {
  return index.numel() == t.size(dim) ? t : t.index_select(dim, index);
}

inline at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                          const at::Tensor& out_mask, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, TaskOrder order, Allocate allocate) {
  check(input, weight, in_mask, out_mask);
  std::vector<int64_t> size = {num_tasks(input, in_mask, out_mask), weight.size(0)};
  for (int d = 0; d < 2; ++d) {
    const int64_t extent = dilation[d] * (weight.size(2 + d) - 1) + 1;
    size.push_back((input.size(2 + d) + 2 * padding[d] - extent) / stride[d] + 1);
  }
  const at::MemoryFormat format = output_memory_format(input);
  at::Tensor output = allocate ? allocate(size, input.options(), format)
                               : at::empty(size, input.options().memory_format(format));
  const bool has_bias = bias.has_value() && bias->defined();
  const std::vector<Task> all = tasks(input, in_mask, out_mask);

  auto run = [&](const Task& task) {
    if (task.length == 0) {
      return;
    }
    at::Tensor out = output.narrow(0, task.output_start, task.length);
    const bool all_out = task.out_channels.numel() == out.size(1);
    const bool no_in = task.in_channels.numel() == 0;
    // Each task clears its own rows, in parallel, and only when some channel stays 0. (Clearing all
    // and then writing the active channels measured some 7x faster than filling the inactive ones.)
    if (!all_out || (no_in && !has_bias)) {
      out.zero_();
    }
    if (task.out_channels.numel() == 0 || (no_in && !has_bias)) {
      return;
    }
    const std::optional<at::Tensor> task_bias =
        has_bias ? std::optional<at::Tensor>(select_channels(*bias, 0, task.out_channels)) : std::nullopt;
    if (no_in) {  // no input reaches the output: only the bias does
      out.index_copy_(1, task.out_channels,
                      task_bias->view({1, -1, 1, 1}).expand({task.length, -1, size[2], size[3]}));
      return;
    }
    const at::Tensor x =
        select_channels(input.narrow(0, task.input_start, task.length), 1, task.in_channels);
    const at::Tensor w =
        select_channels(select_channels(weight, 0, task.out_channels), 1, task.in_channels);
    const at::Tensor y = at::convolution(x, w, task_bias, stride, padding, dilation, false, {0, 0}, 1);
    if (all_out) {
      out.copy_(y);
    } else {
      out.index_copy_(1, task.out_channels, y);
    }
  };

  if (order == TaskOrder::kParallel && all.size() > 1) {
    // Worker threads do not inherit the caller's dispatch state: without it they would dispatch
    // the compact convolutions through autograd again.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, static_cast<int64_t>(all.size()), 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(caller_state);
      for (int64_t i = begin; i < end; ++i) {
        run(all[i]);
      }
    });
  } else {
    for (const Task& task : all) {
      run(task);
    }
  }
  return output;
}

// Gradients with respect to (input, weight, bias); bias's is empty when bias is None. Tasks run one
// after another: tasks that share the input sample accumulate into the same gradient rows.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check(input, weight, in_mask, out_mask);
  at::Tensor grad_input =
      at::empty(input.sizes(), input.options().memory_format(output_memory_format(input))).zero_();
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  for (const Task& task : tasks(input, in_mask, out_mask)) {
    if (task.out_channels.numel() == 0 || task.in_channels.numel() == 0 || task.length == 0) {
      continue;
    }
    const at::Tensor x =
        select_channels(input.narrow(0, task.input_start, task.length), 1, task.in_channels);
    const at::Tensor w =
        select_channels(select_channels(weight, 0, task.out_channels), 1, task.in_channels);
    const at::Tensor go = select_channels(grad_output.narrow(0, task.output_start, task.length), 1,
                                          task.out_channels);
    auto grads = at::convolution_backward(go, x, w, std::nullopt, stride, padding, dilation, false,
                                          {0, 0}, 1, {true, true, false});
    grad_input.narrow(0, task.input_start, task.length).index_add_(1, task.in_channels, std::get<0>(grads));
    grad_weight.index_put_({task.out_channels.unsqueeze(1), task.in_channels.unsqueeze(0)},
                           std::get<1>(grads), /*accumulate=*/true);
  }
  at::Tensor grad_bias = at::empty({0}, weight.options());
  if (bias.has_value() && bias->defined()) {
    // Bias reaches only the active output channels of each task.
    grad_bias = (grad_output.sum({2, 3}) * out_mask.to(grad_output.scalar_type())).sum(0);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace flexops::masked
