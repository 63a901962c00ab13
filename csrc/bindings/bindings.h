// The parts of s3torch._crt, each defined in its own file and put together by module.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace s3torch_py {

namespace py = pybind11;

void register_exceptions(py::module_ &m);  // exceptions.cpp
void register_config(py::module_ &m);      // config.cpp: ClientConfig
void register_handles(py::module_ &m);     // handles.cpp: GetHandle, GetStream, Upload, HostBuffer
void register_client(py::module_ &m);      // client.cpp: NativeClient, ObjectInfo, ListPage
void register_bytes_get(py::module_ &m);   // bytes_get.cpp: BytesGet, CompletionPipe
void register_bytes_put(py::module_ &m);   // bytes_put.cpp: BytesPut

}  // namespace s3torch_py

namespace s3torch {
class S3Error;
}

namespace s3torch_py {

// The Python exception (an S3Exception subclass instance) a core error becomes; the GIL held.
py::object exception_object(const s3torch::S3Error &e);  // exceptions.cpp

}  // namespace s3torch_py
