// The one place where core errors become Python exceptions.
//
//   S3Exception                      base, with .code .http_status .request_id .bucket .key
//   ├── S3NotFoundError              also FileNotFoundError   (NoSuchKey, NoSuchBucket, 404)
//   ├── S3PermissionError            also PermissionError     (403, bad credentials)
//   ├── S3TimeoutError               also TimeoutError
//   ├── S3ConnectionError            also ConnectionError     (refused, reset, DNS, no route)
//   ├── S3InvalidArgumentError       also ValueError          (bad config, range, buffer)
//   ├── S3CancelledError             the transfer was cancelled (abort, KeyboardInterrupt)
//   ├── S3ObjectChangedError         the object was replaced while it was read (412 to If-Match)
//   └── S3ObjectExistsError          also FileExistsError     (a create-only write found the key taken)
#include "bindings.h"

#include "s3torch/errors.h"

namespace s3torch_py {

using s3torch::ErrorKind;
using s3torch::S3Error;

namespace {

// Exception classes, created once at import; owned by the module (leaked references).
PyObject *g_base = nullptr;
PyObject *g_not_found = nullptr;
PyObject *g_permission = nullptr;
PyObject *g_timeout = nullptr;
PyObject *g_connection = nullptr;
PyObject *g_invalid = nullptr;
PyObject *g_cancelled = nullptr;
PyObject *g_changed = nullptr;
PyObject *g_exists = nullptr;

PyObject *make_class(py::module_ &m, const char *name, PyObject *builtin, const char *doc) {
    std::string qual = std::string("s3torch._crt.") + name;
    PyObject *bases = builtin ? PyTuple_Pack(2, g_base, builtin) : PyTuple_Pack(1, g_base);
    PyObject *cls = PyErr_NewExceptionWithDoc(qual.c_str(), doc, bases, nullptr);
    Py_DECREF(bases);
    if (!cls) throw py::error_already_set();
    m.add_object(name, py::reinterpret_borrow<py::object>(cls));
    return cls;
}

}  // namespace

py::object exception_object(const S3Error &e) {
    PyObject *cls = g_base;
    switch (e.kind) {
        case ErrorKind::NotFound: cls = g_not_found; break;
        case ErrorKind::AccessDenied: cls = g_permission; break;
        case ErrorKind::Timeout: cls = g_timeout; break;
        case ErrorKind::Connection: cls = g_connection; break;
        case ErrorKind::InvalidArgument: cls = g_invalid; break;
        case ErrorKind::Cancelled: cls = g_cancelled; break;
        case ErrorKind::ObjectChanged: cls = g_changed; break;
        case ErrorKind::ObjectExists: cls = g_exists; break;
        case ErrorKind::Generic: break;
    }
    // The message and what a server said are shown escaped (s3torch::printable): a key or a
    // server's text may hold terminal escapes, or bytes that are not UTF-8 (which would make
    // a UnicodeDecodeError of this error). The operation, bucket and key are kept as they are
    // (for code that uses them): they come from Python's strings or a listing's keys, which
    // the XML walk only hands over as UTF-8.
    const std::string message = s3torch::printable(e.what());
    py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(cls, "s", message.c_str()));
    if (!exc) throw py::error_already_set();
    auto set = [&](const char *name, py::object v) { PyObject_SetAttrString(exc.ptr(), name, v.ptr()); };
    auto shown_or_none = [](const std::string &s) -> py::object {
        return s.empty() ? py::none() : py::object(py::str(s3torch::printable(s)));
    };
    auto str_or_none = [](const std::string &s) -> py::object {
        return s.empty() ? py::none() : py::object(py::str(s));
    };
    set("code", shown_or_none(e.s3_code));
    set("s3_message", shown_or_none(e.s3_message));
    set("http_status", e.http_status ? py::object(py::int_(e.http_status)) : py::none());
    set("request_id", shown_or_none(e.request_id));
    set("crt_error", e.crt_error_name.empty() ? py::none() : py::object(py::str(e.crt_error_name)));
    set("operation", str_or_none(e.context.operation));
    set("bucket", str_or_none(e.context.bucket));
    set("key", str_or_none(e.context.key));
    return exc;
}

namespace {

void raise(const S3Error &e) {
    py::object exc = exception_object(e);
    PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(exc.ptr())), exc.ptr());
}

}  // namespace

void register_exceptions(py::module_ &m) {
    g_base = PyErr_NewExceptionWithDoc(
        "s3torch._crt.S3Exception",
        "Base of every error s3torch raises for S3. Attributes: code, s3_message, http_status, request_id, "
        "crt_error, operation, bucket, key (None when not known).",
        PyExc_Exception, nullptr);
    if (!g_base) throw py::error_already_set();
    m.add_object("S3Exception", py::reinterpret_borrow<py::object>(g_base));
    g_not_found = make_class(m, "S3NotFoundError", PyExc_FileNotFoundError, "The bucket or key does not exist.");
    g_permission = make_class(m, "S3PermissionError", PyExc_PermissionError,
                              "Access denied, or the credentials are missing or wrong.");
    g_timeout = make_class(m, "S3TimeoutError", PyExc_TimeoutError, "The endpoint did not answer in time.");
    g_connection = make_class(m, "S3ConnectionError", PyExc_ConnectionError,
                              "No connection to the endpoint (refused, reset, DNS failure), after retries.");
    g_invalid = make_class(m, "S3InvalidArgumentError", PyExc_ValueError,
                           "A bad argument or configuration, caught before or by the request.");
    g_cancelled = make_class(m, "S3CancelledError", nullptr, "The transfer was cancelled.");
    g_changed = make_class(m, "S3ObjectChangedError", nullptr,
                           "The object was replaced while it was being read (its ETag changed): what was read of "
                           "it would mix two versions. Read it again.");
    g_exists = make_class(m, "S3ObjectExistsError", PyExc_FileExistsError,
                          "A create-only write (exclusive=True: If-None-Match: *) found the key already holding an "
                          "object; nothing was written.");
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const S3Error &e) {
            raise(e);
        }
    });
}

}  // namespace s3torch_py
