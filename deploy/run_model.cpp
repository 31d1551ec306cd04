// Runs an AOTInductor package of a network with flexops layers from C++, without Python.
//
//   run_model DIR     (DIR as written by deploy/export.py: model.pt2, inputs.pt, expected.pt)
//
// The package calls the flexops ops by name; linking libflexops.so registers them (see
// CMakeLists.txt: it is linked even though no symbol of it is referenced). Prints the largest
// difference from the eager output and from the package's output in Python; fails beyond 1e-5.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

// A list of tensors saved from Python with torch.save.
std::vector<at::Tensor> load_tensors(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw std::runtime_error("cannot open " + path);
  }
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::vector<at::Tensor> tensors;
  for (const c10::IValue& value : torch::pickle_load(bytes).toList()) {
    tensors.push_back(value.toTensor());
  }
  return tensors;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: " << argv[0] << " DIR   (written by deploy/export.py)\n";
    return 2;
  }
  const std::string dir = argv[1];
  torch::inductor::AOTIModelPackageLoader loader(dir + "/model.pt2");
  const std::vector<at::Tensor> outputs = loader.run(load_tensors(dir + "/inputs.pt"));
  const std::vector<at::Tensor> expected = load_tensors(dir + "/expected.pt");
  const double from_eager = (outputs.at(0) - expected.at(0)).abs().max().item<double>();
  const double from_python = (outputs.at(0) - expected.at(1)).abs().max().item<double>();
  std::cout << "C++ output " << outputs.at(0).sizes() << ": max |C++ - Python eager| = " << from_eager
            << ", max |C++ - Python package| = " << from_python << "\n";
  return from_eager <= 1e-5 && from_python <= 1e-5 ? 0 : 1;
}
