// The Python module relay_kernels._C: empty on purpose. Importing it runs the static
// TORCH_LIBRARY_IMPL registrations of the other translation units; the schemas themselves are
// defined in Python (relay_kernels/_ops.py) before this import.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
