// Channel-masked convolution on CPU: for each task, gather the active input channels and the
// matching weight slice, convolve the compact problem with oneDNN, and write the active output
// channels into the task's rows of the output. Work is proportional to active inputs x active
// outputs per task. The output comes from kept blocks when large (cpu/output_pool.h): with many
// tasks it is many maps large, and a fresh mapping of it cost more than the convolutions.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/layout.h"
#include "common/masked_conv2d.h"
#include "cpu/output_pool.h"

namespace flexops {
namespace {

// One task's slice of the problem: the input samples and output rows it covers, and its channels.
struct Task {
  int64_t input_start, output_start, length;  // rows [start, start + length) of input and output
  at::Tensor in_channels, out_channels;       // int64 indices of the active channels
};

int64_t num_tasks(const at::Tensor& input, const at::Tensor& in_mask, const at::Tensor& out_mask) {
  const int64_t m = std::max(in_mask.size(0), out_mask.size(0));
  return m == 1 ? input.size(0) : m;
}

std::vector<Task> tasks(const at::Tensor& input, const at::Tensor& in_mask,
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
at::Tensor select_channels(const at::Tensor& t, int64_t dim, const at::Tensor& index) {
  return index.numel() == t.size(dim) ? t : t.index_select(dim, index);
}

at::Tensor masked_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& in_mask,
                             const at::Tensor& out_mask, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  masked::check(input, weight, in_mask, out_mask);
  std::vector<int64_t> size = {num_tasks(input, in_mask, out_mask), weight.size(0)};
  for (int d = 0; d < 2; ++d) {
    const int64_t extent = dilation[d] * (weight.size(2 + d) - 1) + 1;
    size.push_back((input.size(2 + d) + 2 * padding[d] - extent) / stride[d] + 1);
  }
  at::Tensor output = cpu::empty_output(size, input.options(), output_memory_format(input));
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

  // Tasks run in parallel, each convolution on one thread: a compact TASNet-sized problem (16 -> 16
  // channels, 128x128) is too small to split over cores. Measured side by side on the shared 2-core
  // machine, 27 tasks of 25% in x 25% out channels of a 64 -> 64 3x3 conv: 120-160 ms this way,
  // ~1.2 s with the tasks one after another and each convolution on both threads.
  if (all.size() > 1) {
    // Worker threads do not inherit the caller's dispatch state: without it they would dispatch
    // the compact convolutions through autograd again.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, static_cast<int64_t>(all.size()), 1, [&](int64_t begin, int64_t end) {
      const at::ThreadLocalStateGuard guard(caller_state);
      for (int64_t i = begin; i < end; ++i) {
        run(all[i]);
      }
    });
  } else {  // one task: its convolution may use every thread
    for (const Task& task : all) {
      run(task);
    }
  }
  return output;
}

// Gradients with respect to (input, weight, bias); bias's is empty when bias is None. Tasks run one
// after another: tasks that share the input sample accumulate into the same gradient rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& bias, const at::Tensor& in_mask, const at::Tensor& out_mask,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  masked::check(input, weight, in_mask, out_mask);
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

}  // namespace

TORCH_LIBRARY_IMPL(flexops, CPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_cpu);
  m.impl("masked_conv2d_backward", &masked_conv2d_backward_cpu);
}

}  // namespace flexops
