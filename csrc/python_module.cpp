// The Python module flexops._C. Importing it loads this library, whose static initialisers register
// the flexops ops with the dispatcher; the module itself only reports how it was built.
#include <Python.h>

#ifndef FLEXOPS_CUDA_ARCHS
#define FLEXOPS_CUDA_ARCHS ""
#endif

static struct PyModuleDef flexops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

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
