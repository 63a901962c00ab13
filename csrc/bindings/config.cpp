// s3torch._crt.ClientConfig: the core's ClientConfig as a Python class, built from the one
// field list (S3TORCH_CLIENT_CONFIG_FIELDS): a property per field, keyword construction, and
// validate(). Python types are checked here (TypeError); values by the core (ValueError).
#include "bindings.h"

#include "s3torch/config.h"
#include "s3torch/errors.h"

#include <pybind11/stl.h>

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace s3torch_py {

namespace {

using s3torch::ClientConfig;

std::string type_name(py::handle v) { return py::str(py::type::handle_of(v).attr("__name__")); }

[[noreturn]] void wrong_type(const char *field, const char *want, py::handle v) {
    throw py::type_error(std::string("ClientConfig.") + field + " must be " + want + ", got " + type_name(v));
}

// A Python value for a field of type T; `min`/`max` only to word an int that T cannot hold.
template <class T>
T from_python(py::handle v, const char *field, uint64_t min, uint64_t max) {
    if constexpr (std::is_same_v<T, std::string>) {
        if (!py::isinstance<py::str>(v)) wrong_type(field, "a str", v);
        return v.cast<std::string>();
    } else if constexpr (std::is_same_v<T, bool>) {
        return PyObject_IsTrue(v.ptr()) == 1;  // any truth value, as Python's `if` reads it
    } else if constexpr (std::is_floating_point_v<T>) {
        if (PyBool_Check(v.ptr()) || !(PyLong_Check(v.ptr()) || PyFloat_Check(v.ptr())))
            wrong_type(field, "a number", v);
        return v.cast<T>();
    } else {
        if (PyBool_Check(v.ptr()) || !PyLong_Check(v.ptr())) wrong_type(field, "an int", v);
        unsigned long long got = PyLong_AsUnsignedLongLong(v.ptr());
        if (PyErr_Occurred() || got > std::numeric_limits<T>::max()) {  // negative, or too large for T
            PyErr_Clear();
            s3torch::throw_out_of_range(field, min, max, py::str(v).cast<std::string>());
        }
        return static_cast<T>(got);
    }
}

void set_field(ClientConfig &c, const std::string &field, py::handle v) {
#define S3TORCH_SET_FIELD(type, name, py_name, default_value, min, max, doc) \
    if (field == py_name) {                                                  \
        c.name = from_python<type>(v, py_name, min, max);                    \
        return;                                                              \
    }
    S3TORCH_CLIENT_CONFIG_FIELDS(S3TORCH_SET_FIELD)
#undef S3TORCH_SET_FIELD
    throw py::type_error("ClientConfig() got an unexpected keyword argument '" + field + "'");
}

}  // namespace

void register_config(py::module_ &m) {
    py::class_<ClientConfig> cls(m, "ClientConfig",
                                 "Configuration of a NativeClient: every field with its default; keyword arguments "
                                 "set fields. validate() (and NativeClient) check the values.");
    cls.def(py::init([](py::kwargs kwargs) {
           ClientConfig c;
           for (auto item : kwargs) set_field(c, item.first.cast<std::string>(), item.second);
           return c;
       }))
        .def("validate", &ClientConfig::validate,
             "Raise S3InvalidArgumentError (a ValueError) naming the first field out of its limits.")
        .def_static(
            "fields",
            [] {
                return std::vector<std::string>{
#define S3TORCH_FIELD_NAME(type, name, py_name, default_value, min, max, doc) py_name,
                    S3TORCH_CLIENT_CONFIG_FIELDS(S3TORCH_FIELD_NAME)
#undef S3TORCH_FIELD_NAME
                };
            },
            "The fields' names, in declaration order.");
#define S3TORCH_BIND_FIELD(type, name, py_name, default_value, min, max, doc) \
    cls.def_property(                                                         \
        py_name, [](const ClientConfig &c) { return c.name; },                \
        [](ClientConfig &c, py::handle v) { c.name = from_python<type>(v, py_name, min, max); }, doc);
    S3TORCH_CLIENT_CONFIG_FIELDS(S3TORCH_BIND_FIELD)
#undef S3TORCH_BIND_FIELD
}

}  // namespace s3torch_py
