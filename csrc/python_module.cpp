// The Python module flexops._C. Importing it loads this library, whose static initialisers register
// the flexops ops with the dispatcher; the module itself reports how it was built, what memory the
// CPU kernels keep between calls and in which half types they multiply natively.
#include <Python.h>

#include <exception>

#include "cpu/in_float32.h"
#include "cpu/kept_memory.h"

#ifndef FLEXOPS_CUDA_ARCHS
#define FLEXOPS_CUDA_ARCHS ""
#endif

static PyObject* kept_cpu_bytes(PyObject*, PyObject*) {
  try {
    return PyLong_FromSize_t(flexops::cpu::kept_bytes());
  } catch (const std::exception& error) {  // a bad FLEXOPS_KEPT_CPU_MB, read on first use
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

static PyObject* cpu_half_type_products(PyObject*, PyObject*) {
  try {
    return Py_BuildValue("(OO)", flexops::cpu::half_type_products(at::kBFloat16) ? Py_True : Py_False,
                         flexops::cpu::half_type_products(at::kHalf) ? Py_True : Py_False);
  } catch (const c10::Error& error) {  // a bad FLEXOPS_CPU_HALF_PRODUCTS: the message, not the C++ stack
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

static PyMethodDef flexops_methods[] = {
    {"kept_cpu_bytes", kept_cpu_bytes, METH_NOARGS,
     "kept_cpu_bytes() -> int\n\nBytes of CPU memory that flexops' kernels keep for their next call "
     "(blocks of tensors that have died; FLEXOPS_KEPT_CPU_MB caps it, 0 keeps none)."},
    {"cpu_half_type_products", cpu_half_type_products, METH_NOARGS,
     "cpu_half_type_products() -> (bool, bool)\n\nWhether the CPU kernels hand their products to oneDNN in "
     "bfloat16 and in float16 (cpu::half_type_products: PyTorch's check, or FLEXOPS_CPU_HALF_PRODUCTS)."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef flexops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, flexops_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&flexops_module);
  if (module == nullptr) {
    return nullptr;
  }
  // Architectures the CUDA kernels were compiled for; empty when they were not built.
  if (PyModule_AddStringConstant(module, "cuda_archs", FLEXOPS_CUDA_ARCHS) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
