"""Triton kernels of the flexops ops. Imported lazily, only when the triton backend runs, so that
TRITON_INTERPRET can be set before triton is first imported."""
