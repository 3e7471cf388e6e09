// Registers the CUDA kernels as torch ops (torch.ops.dprope_C.*) and makes the shared library
// importable as the Python module dprope_kernels._C.
#include <Python.h>
#include <torch/library.h>

#include "dprope.h"

TORCH_LIBRARY(dprope_C, m) {
  m.def("rope(Tensor q, Tensor k, Tensor(a!) out_q, Tensor(b!) out_k, Tensor phases, Tensor positions, "
        "bool in_interleaved, bool out_interleaved, bool conjugate, float scale) -> ()");
  m.def("histogram(Tensor phases, Tensor? positions, Tensor? weights, Tensor(a!) out, int n_pos, int start, "
        "int bins) -> ()");
  m.def("qkv_rope_projection(Tensor x, Tensor w_q, Tensor w_k, Tensor? w_v, Tensor? b_q, Tensor? b_k, Tensor? b_v, "
        "Tensor? n_q, Tensor? n_k, float norm_eps, Tensor(a!) out, int n_q_heads, int n_k_heads, Tensor phases, "
        "Tensor positions, bool interleaved, float scale) -> ()");
}

TORCH_LIBRARY_IMPL(dprope_C, CUDA, m) {
  m.impl("rope", &dprope::rope_cuda);
  m.impl("histogram", &dprope::histogram_cuda);
  m.impl("qkv_rope_projection", &dprope::qkv_rope_projection_cuda);
}

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "dprope CUDA kernels (ops under torch.ops.dprope_C)", -1, nullptr};
  return PyModule_Create(&module);
}
