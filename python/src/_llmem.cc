// Copyright 2026 The llmem Authors.
// The extension module behind the `llmem` Python package: JSON text in, JSON
// text out. The package (python/llmem/__init__.py) turns keyword arguments
// into a request and the answers into objects.

#include <string>
#include <utility>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "llmem/error.h"
#include "llmem/model.h"
#include "llmem/report.h"
#include "llmem/request.h"

namespace py = pybind11;

namespace {

// The Python class llmem.Error, registered by the package at import (a
// ValueError subclass taking message, source and key). Never released: it
// lives as long as the interpreter.
PyObject* error_class = nullptr;

void set_error_class(py::object cls) {
  Py_XDECREF(error_class);
  error_class = cls.release().ptr();
}

void raise_llmem_error(const llmem::Error& e) {
  if (error_class == nullptr) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return;
  }
  // Paths and values in messages may not be UTF-8: replace, never fail here.
  auto text = [](const std::string& s) -> py::object {
    if (s.empty())
      return py::none();
    return py::reinterpret_steal<py::object>(
        PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
  };
  py::object instance = py::reinterpret_borrow<py::object>(error_class)(
      text(e.what()), text(e.source()), text(e.key()));
  PyErr_SetObject(error_class, instance.ptr());
}

llmem::RequestOptions request_options(const std::string& source) {
  llmem::RequestOptions options;
  options.source = source;
  return options;
}

// (the CLI's JSON, the request's warnings)
std::pair<std::string, std::vector<std::string>> estimate_json(const std::string& request,
                                                               const std::string& source) {
  py::gil_scoped_release release;
  llmem::Request r = llmem::parse_request(request, request_options(source));
  return {llmem::estimate_request_json(r), r.warnings};
}

// (the CLI's JSON, the recipe's warnings)
std::pair<std::string, std::vector<std::string>> plan_json(const std::string& request,
                                                           const std::string& source) {
  py::gil_scoped_release release;
  llmem::PlanQuery q = llmem::parse_plan_request(request, request_options(source));
  return {llmem::run_plan_request(q).json, q.warnings};
}

std::string inspect_json(const std::string& model, const std::string& source) {
  py::gil_scoped_release release;
  return llmem::inspect_json(llmem::load_model_json(model, request_options(source)));
}

std::string models_json() {
  py::gil_scoped_release release;
  return llmem::models_json();
}

}  // namespace

PYBIND11_MODULE(_llmem, m) {
  m.doc() = "llmem's engine: JSON requests in, the CLI's JSON documents out";
  m.attr("__version__") = "0.1.0";
  m.attr("schema_version") = llmem::kSchemaVersion;
  m.def("_set_error_class", &set_error_class, "Registers the class raised for llmem::Error");
  m.def("estimate_json", &estimate_json, py::arg("request"), py::arg("source") = "request",
        "A request (JSON object text) -> (the CLI's `estimate --format json` document, "
        "warnings)");
  m.def("plan_json", &plan_json, py::arg("request"), py::arg("source") = "request",
        "A plan request (JSON object text) -> (the CLI's `plan --format json` document, "
        "warnings)");
  m.def("plan_keys", &llmem::plan_request_keys, "Every key a plan request accepts");
  m.def("inspect_json", &inspect_json, py::arg("model"), py::arg("source") = "request",
        "A model (JSON string or config object, as text) -> `inspect --format json`");
  m.def("models_json", &models_json, "The catalog, as `models --format json`");
  m.def("request_keys", &llmem::request_keys, "Every key a request accepts");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p)
        std::rethrow_exception(p);
    } catch (const llmem::Error& e) {
      raise_llmem_error(e);
    }
  });
}
