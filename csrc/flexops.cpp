// Every flexops op schema, declared once. Implementations register per dispatch key in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; the Triton and reference backends register from Python
// (flexops/ops/<op>.py), which also adds autograd and the fake (meta) kernels.
#include <torch/library.h>

TORCH_LIBRARY(flexops, m) {
  // y_b = conv(x_b, sum_i alpha_bi W_i) + sum_i alpha_bi b_i; alpha is [p] (shared) or [B, p].
  m.def(
      "tunable_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor alpha, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");
  // Gradients of tunable_conv2d for (input, weight, bias, alpha); bias's is empty when bias is None.
  m.def(
      "tunable_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "Tensor alpha, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt groups) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // The same forward, run by the fused Triton kernel (flexops/triton/tunable_conv2d.py).
  m.def(
      "tunable_conv2d_triton(Tensor input, Tensor weight, Tensor? bias, Tensor alpha, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, SymInt groups) -> Tensor");

  // torchvision.ops.deform_conv2d semantics; groups = input.size(1) / weight.size(1),
  // offset groups = offset.size(1) / (2 * kh * kw); mask None is DCNv1.
  m.def(
      "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  // Gradients for (input, offset, weight, mask); mask's is empty when mask is None. The bias
  // gradient is grad_output summed over (0, 2, 3) and is left to the caller.
  m.def(
      "deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, "
      "Tensor? mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "deform_conv2d_triton(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  m.def(
      "deform_conv2d_backward_triton(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, "
      "Tensor? mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");

  // Per-task channel-masked convolution (TASNet): in_mask bool [Mi, Cin], out_mask bool [Mo, Cout],
  // each row shared (1) or per task (M); input batch 1 or M, or any batch when M = 1. Inactive
  // input channels count as zero; inactive output channels are exactly zero, bias included.
  m.def(
      "masked_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor in_mask, Tensor out_mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  // Gradients for (input, weight, bias); bias's is empty when bias is None. Masks get none.
  m.def(
      "masked_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "Tensor in_mask, Tensor out_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) "
      "-> (Tensor, Tensor, Tensor)");
  // The same forward, one launch for all tasks (flexops/triton/masked_conv2d.py).
  m.def(
      "masked_conv2d_triton(Tensor input, Tensor weight, Tensor? bias, Tensor in_mask, "
      "Tensor out_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  // Its gradients, likewise one launch per gradient for all tasks.
  m.def(
      "masked_conv2d_backward_triton(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "Tensor in_mask, Tensor out_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) "
      "-> (Tensor, Tensor, Tensor)");

  // Swin window attention (SwinIR numerics): qkv [B, H, W, 3C] token map as SwinIR's qkv Linear
  // gives it, rolled by -shift_size and cut into window_size^2 windows by index arithmetic;
  // rel_pos_bias [heads, N, N]; active bool [B, H/ws, W/ws] over the shifted window grid, inactive
  // windows are not computed and give 0; mask_value is added to the logits of pairs from different
  // shift regions (SwinIR: -100), None excludes them exactly. Returns [B, H, W, C] in token order.
  m.def(
      "window_attention(Tensor qkv, int num_heads, int window_size, int shift_size, "
      "Tensor? rel_pos_bias, float scale, Tensor? active, float? mask_value=None) -> Tensor");
  // Gradients for (qkv, rel_pos_bias); the bias's is empty when rel_pos_bias is None.
  m.def(
      "window_attention_backward(Tensor grad_output, Tensor qkv, int num_heads, int window_size, "
      "int shift_size, Tensor? rel_pos_bias, float scale, Tensor? active, float? mask_value=None) "
      "-> (Tensor, Tensor)");
  // The same pair, run by the Triton kernels (flexops/triton/window_attention.py).
  m.def(
      "window_attention_triton(Tensor qkv, int num_heads, int window_size, int shift_size, "
      "Tensor? rel_pos_bias, float scale, Tensor? active, float? mask_value=None) -> Tensor");
  m.def(
      "window_attention_backward_triton(Tensor grad_output, Tensor qkv, int num_heads, "
      "int window_size, int shift_size, Tensor? rel_pos_bias, float scale, Tensor? active, "
      "float? mask_value=None) -> (Tensor, Tensor)");

  // An uninitialised tensor of `size` with like's dtype and device, from the memory the CPU kernels
  // keep between calls (csrc/cpu/kept_memory.h): for large intermediates that Python code writes
  // with out= (flexops.nn.KeptLinear). CPU only.
  m.def("kept_empty_like(Tensor like, int[] size) -> Tensor");
}
